"""The Python API: learned prompts as a classifier.

    import cpbench
    clf = cpbench.load("prompts.safetensors")          # builds the backbone the file names
    clf.predict(["cat.jpg", "dog.png"], top_k=5)       # [[(class name, probability), ...], ...]
    clf.logits(images)                                 # [N, C] float32 tensor
    clf.with_classes(["zebra", "okapi"])               # the same prompts on other classes

``images`` are image file paths, PIL images, or a tensor batch already preprocessed with
``clf.transform``. Computation is fp32 in batches of ``clf.batch_size`` (the evaluation's test batch
size), in the same order of operations as ``cpbench run``'s evaluation, so the logits of a test split
equal the evaluation's.

Sampling at test time (Bayesian prompts draw Monte-Carlo noise from torch's global RNG): every
``logits``/``predict`` call runs in a forked RNG seeded with ``clf.sample_seed``, so a call is a
deterministic function of its images and leaves the caller's RNG untouched. The default seed is
the one the evaluation of the training classes used (recorded in the file per target as
``rng_seed``); one call over a whole test split, in split order, then reproduces that evaluation
exactly. Set ``clf.sample_seed`` to another target's ``rng_seed`` (e.g. the new classes') to
reproduce its row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cpbench.state import export
from cpbench.errors import UserError


def load(path: str | Path, backbone: Any = None, device: str = "auto", weights: str | None = None,
         sample_seed: int | None = None) -> "PromptClassifier":
    """A classifier from an export file.

    ``backbone``: None (load the one the file names), a backbone name (``local-dir:PATH`` for a
    folder that moved), a cpbench ``Backbone`` or an open_clip ``CLIP`` model you already loaded
    (it is frozen and moved to ``device`` in fp32). A backbone whose weights are not the file's is
    refused with one line. ``weights``: the local checkpoint, for files learned on one.
    """
    from cpbench.engine.precision import resolve_device

    path = Path(path)
    meta, tensors = export.read(path)
    dev = resolve_device(device)
    bb = _backbone(meta, backbone, weights, path)
    bb.to(device=dev, dtype=torch.float32)
    return PromptClassifier(meta, export.learned_state(tensors), bb, dev, list(meta["classnames"]), sample_seed,
                            where=path)


def _backbone(meta: dict, given: Any, weights: str | None, where: Path):
    from cpbench.models.backbone import Backbone, BackboneSpec, load_backbone

    rec = meta["backbone"]
    if given is None or isinstance(given, str):
        name = given or rec["name"]
        export.check_backbone_request(meta, name, rec["pretrained"], weights, where)
        bb = load_backbone(name, rec["pretrained"], weights)
    elif isinstance(given, Backbone):
        bb = given
    elif isinstance(given, nn.Module) and hasattr(given, "encode_image") and hasattr(given, "encode_text"):
        from cpbench.models import tokenizers
        from cpbench.models.backbone import local_folder, model_config_or_none

        ctx = int(getattr(given, "context_length", rec.get("context_length") or 77))
        cfg = model_config_or_none(rec["name"])   # the file's backbone names its tokenizer (SigLIP's, CLIPA's ...)
        tok = tokenizers.load(rec["name"], cfg, local_folder(rec["name"])) if cfg else None
        bb = Backbone(given, ctx, _preprocess(meta), BackboneSpec(rec["name"], rec["pretrained"]), tokenizer=tok,
                      config=cfg)
    else:
        raise UserError(f"backbone must be None, a name, a cpbench Backbone or an open_clip CLIP model; got "
                        f"{type(given).__name__}")
    export.check_loaded_backbone(meta, bb, where)
    return bb


def _preprocess(meta: dict):
    from cpbench.models.backbone import Preprocess

    p = meta["preprocess"]
    return Preprocess(int(p["image_size"]), tuple(p["mean"]), tuple(p["std"]), p.get("interpolation", "bicubic"),
                      resize_mode=p.get("resize_mode", "shortest"), fill_color=int(p.get("fill_color", 0)))


def check_classes(meta: dict, classnames: Sequence[str]) -> None:
    """Refuse other classes than the trained ones for a model bound to them (CSC CoOp, linear probe)."""
    from cpbench.config import ResolvedConfig
    from cpbench.methods.registry import get_method_class

    trained = list(meta["classnames"])
    if list(classnames) == trained:
        return
    cls = get_method_class(meta["method"])
    if not cls.takes_new_classes(ResolvedConfig.from_dict(meta["config"], cls.Options).options):
        raise UserError(f"{meta['method']} with these options cannot score classes it was not trained on (it holds "
                        f"one learned entry per trained class: a class-specific context, a linear probe, a cache "
                        f"model); use its {len(trained)} trained classes")


def _fork_rng(device: torch.device):
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


class PromptClassifier:
    """A learned prompt model on its backbone, for one list of class names."""

    def __init__(self, meta: dict, state: dict, backbone, device: torch.device, classnames: list[str],
                 sample_seed: int | None = None, where: Path | str = "the export"):
        from cpbench.config import ResolvedConfig
        from cpbench.data.images import test_transform
        from cpbench.methods.registry import get_method_class

        self.meta = meta
        self.name = meta["method"]
        self.backbone = backbone
        self.device = device
        self.where = where
        self._state = state
        cls = get_method_class(self.name)
        cfg = ResolvedConfig.from_dict(meta["config"], cls.Options)
        trained = list(meta["classnames"])
        check_classes(meta, classnames)
        with _fork_rng(device):  # building a method draws initial values: keep the caller's RNG as it was
            model = cls(backbone, trained, cfg.options, template=meta.get("template", "a photo of a {}."))
        model.to(device=device, dtype=torch.float32)
        model.load_learned_state(export.fitting_state(state, model, where))
        if list(classnames) != trained:
            model.set_classnames(list(classnames))
            model.to(device=device, dtype=torch.float32)
        self.model = model.eval()
        self.batch_size = int(meta["config"]["train"].get("test_batch_size", 100))
        targets = (meta.get("job") or {}).get("targets") or [{}]
        self.sample_seed = int(sample_seed if sample_seed is not None else targets[0].get("rng_seed", 0))
        self.transform = test_transform(_preprocess(meta))

    @property
    def classnames(self) -> list[str]:
        return list(self.model.classnames)

    def with_classes(self, classnames: Sequence[str]) -> "PromptClassifier":
        """The same learned prompts scoring ``classnames`` (refused for methods bound to their classes)."""
        names = [str(c) for c in classnames]
        if not names or len(set(names)) != len(names):
            raise UserError("with_classes needs a list of distinct class names")
        return PromptClassifier(self.meta, self._state, self.backbone, self.device, names, self.sample_seed, self.where)

    # ------------------------------------------------------------------ inputs
    def _image(self, item) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        if isinstance(item, Image.Image):
            return self.transform(item.convert("RGB"))
        if isinstance(item, torch.Tensor):
            return item
        path = Path(item)
        if path.is_dir():
            raise UserError(f"{path} is a folder; pass image files (`cpbench predict` expands folders)")
        try:
            with Image.open(path) as im:
                return self.transform(im.convert("RGB"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such image file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{path} is not an image PIL can read ({exc.__class__.__name__}); pass image files") from None

    def _batches(self, images, batch_size: int):
        if isinstance(images, torch.Tensor):
            images = images.unsqueeze(0) if images.dim() == 3 else images
            for start in range(0, images.shape[0], batch_size):
                yield images[start: start + batch_size]
            return
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        for start in range(0, len(images), batch_size):
            yield torch.stack([self._image(x) for x in images[start: start + batch_size]])

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """[N, C] float32 logits (rows in input order, columns in ``classnames`` order)."""
        m, dev = self.model, self.device
        out = []
        with _fork_rng(dev):
            torch.manual_seed(self.sample_seed)
            context = m.eval_context()
            for x in self._batches(images, batch_size or self.batch_size):
                out.append(m.logits_from_features(m.encode_images(x.to(dev, torch.float32)), context).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(m.classnames))

    def predict(self, images, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``top_k`` classes with their probabilities (softmax of the logits)."""
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        probs = self.logits(images).softmax(dim=-1)
        values, idx = probs.topk(min(top_k, probs.shape[1]), dim=-1)
        names = self.classnames
        return [[(names[i], float(v)) for v, i in zip(vr.tolist(), ir.tolist())] for vr, ir in zip(values, idx)]

    def __repr__(self) -> str:
        return f"PromptClassifier({self.name}, {len(self.classnames)} classes, {export.describe(self.meta)})"
