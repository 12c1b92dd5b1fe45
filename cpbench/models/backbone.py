"""Loading a frozen open_clip CLIP and exposing what prompt methods need.

Backbone names:
- ``toy``: the embedded tiny CLIP shipped with cpbench (offline, CPU-friendly);
- ``tiny``: a very small random-weight CLIP for tests and smoke runs;
- any open_clip model name (``ViT-B-16`` …) with a pretrained tag (``openai`` …), ``none`` for
  random weights, or ``--weights PATH`` for a local checkpoint;
- ``local-dir:PATH``: a folder with ``open_clip_config.json`` and weights.

OpenAI weights were trained with QuickGELU: it is switched on for ``--pretrained openai`` however
the weights are loaded (open_clip issue #771). open_clip is imported where a model is built, so
importing a method class (as `cpbench report` does, for its defaults) does not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cpbench.errors import UserError
from cpbench.models.text import PromptTextEncoder, common_prefix
from cpbench.models.vision import PromptImageEncoder

TOY_DIR = Path(__file__).parent / "toy"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    name: str = "ViT-B-16"
    pretrained: str = "openai"
    weights: str | None = None

    @property
    def quick_gelu(self) -> bool:
        return self.pretrained == "openai" or self.name.endswith("quickgelu")


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    # RandomResizedCrop's area range when training prompts (Dassl's INPUT.RRCROP_SCALE default);
    # None: no random crop. The 64-pixel toy backbone declares its own (see its toy_clip.json).
    train_crop_scale: tuple[float, float] | None = (0.08, 1.0)


def _read_safetensors(path: Path, header_only: bool = False):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if header_only:
            with safe_open(str(path), "pt") as fh:
                return list(fh.keys())
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(f"--weights {path}: not a readable safetensors file ({why}); is it truncated? "
                        "download or export it again") from None


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise UserError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:  # OpenAI's released checkpoints are TorchScript archives
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise UserError(f"--weights {path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"--weights {path}: expected a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """``load_state_dict(strict=True)``, with a one-line error that names the keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_names(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} with another shape ({_names(shapes)})")
    if problems:
        raise UserError(f"{source} does not fit {arch}: {'; '.join(problems)}; pass weights of that architecture "
                        "or the --backbone they were made for")
    model.load_state_dict(state, strict=True)


def _build_from_cfg(cfg: dict, quick_gelu: bool) -> nn.Module:
    import open_clip

    return open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                text_cfg=cfg["text_cfg"], quick_gelu=quick_gelu)


def _crop_scale(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def toy_fingerprint() -> str:
    """A short digest of the embedded toy backbone's config (which records its pretraining run)."""
    return hashlib.sha256((TOY_DIR / "toy_clip.json").read_bytes()).hexdigest()[:12]


def _toy(spec: BackboneSpec) -> tuple[nn.Module, int, Preprocess]:
    cfg_path = TOY_DIR / "toy_clip.json"
    if not cfg_path.exists():
        raise UserError("the embedded toy backbone is missing from this installation; reinstall cpbench")
    cfg = json.loads(cfg_path.read_text())
    model = _build_from_cfg(cfg, cfg.get("quick_gelu", False))
    if spec.weights:
        state = _load_state(Path(spec.weights))
    elif spec.pretrained in ("none", "random"):
        state = None
    else:
        from safetensors.torch import load_file

        state = load_file(str(TOY_DIR / "toy_clip.safetensors"))
    if state is not None:
        _load_into(model, {k: v.float() for k, v in state.items()}, f"--weights {spec.weights}" if spec.weights
                   else "the embedded toy weights", "the toy backbone")
    pp = cfg.get("preprocess", {})
    pre = Preprocess(pp.get("image_size", cfg["vision_cfg"]["image_size"]), tuple(pp.get("mean", OPENAI_MEAN)),
                     tuple(pp.get("std", OPENAI_STD)), pp.get("interpolation", "bicubic"),
                     _crop_scale(pp.get("train_crop_scale", (0.08, 1.0))))
    return model, cfg["text_cfg"].get("context_length", 77), pre


LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")


def local_dir_weights(path: Path) -> Path | None:
    """The weights file a ``local-dir:PATH`` backbone loads (the first of LOCAL_DIR_WEIGHTS present)."""
    return next((path / f for f in LOCAL_DIR_WEIGHTS if (path / f).exists()), None)


def _local_dir(path: Path, spec: BackboneSpec) -> tuple[nn.Module, int, Preprocess]:
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.exists():
        raise UserError(f"local-dir:{path}: no open_clip_config.json in that folder")
    cfg = json.loads(cfg_file.read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    model = _build_from_cfg(model_cfg, model_cfg.get("quick_gelu", False) or spec.quick_gelu)
    weights = local_dir_weights(path)
    if weights is None:
        raise UserError(f"local-dir:{path}: no weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    _load_into(model, _load_state(weights), str(weights), f"local-dir:{path}'s config")
    pp = cfg.get("preprocess_cfg", {})
    size = model_cfg["vision_cfg"].get("image_size", 224)
    pre = Preprocess(pp.get("size", size) if isinstance(pp.get("size", size), int) else size,
                     tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD)),
                     pp.get("interpolation", "bicubic"))
    return model, model_cfg["text_cfg"].get("context_length", 77), pre


# A very small random CLIP for tests and smoke runs (``--backbone tiny``): always random weights.
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _tiny(spec: BackboneSpec) -> tuple[nn.Module, int, Preprocess]:
    model = _build_from_cfg(TINY_CFG, False)
    if spec.weights:
        _load_into(model, _load_state(Path(spec.weights)), f"--weights {spec.weights}", "the tiny backbone")
    return model, TINY_CFG["text_cfg"]["context_length"], Preprocess(32, OPENAI_MEAN, OPENAI_STD)


def _open_clip(spec: BackboneSpec) -> tuple[nn.Module, int, Preprocess]:
    import open_clip

    if spec.name not in open_clip.list_models():
        raise UserError(f"unknown backbone {spec.name!r}; use `toy`, `local-dir:PATH` or an open_clip model "
                        f"name such as ViT-B-16 (see `cpbench list`)")
    pretrained = None if (spec.weights or spec.pretrained in ("none", "random", "")) else spec.pretrained
    fix = "pass --weights PATH to a local checkpoint, or use --backbone toy (the embedded offline backbone)"
    how = "download"
    if pretrained is not None and not Path(pretrained).is_file():
        from cpbench.models import hub

        how = hub.plan(open_clip.get_pretrained_cfg(spec.name, pretrained))
        if how.startswith("unavailable"):
            raise UserError(f"cannot load {spec.name} weights {spec.pretrained!r}: {how.split(': ', 1)[1]}; {fix}")
    logging.disable(logging.ERROR)  # open_clip logs download failures itself; we say it in one line
    try:
        from contextlib import nullcontext

        from cpbench.models import hub

        with hub.hub_offline() if how == "cache" else nullcontext():
            model = open_clip.create_model(spec.name, pretrained=pretrained, force_quick_gelu=spec.quick_gelu)
    except Exception as exc:  # offline, unknown tag, hub errors
        raise UserError(
            f"cannot load {spec.name} weights {spec.pretrained!r} ({exc.__class__.__name__}): offline? {fix}"
        ) from None
    finally:
        logging.disable(logging.NOTSET)
    if spec.weights:
        _load_into(model, _load_state(Path(spec.weights)), f"--weights {spec.weights}", spec.name)
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pre = Preprocess(int(size), tuple(pcfg.get("mean", OPENAI_MEAN)), tuple(pcfg.get("std", OPENAI_STD)),
                     pcfg.get("interpolation", "bicubic"))
    return model, model.context_length, pre


class Backbone(nn.Module):
    """A frozen CLIP with prompt-aware encoders, tokenizer and preprocessing facts."""

    def __init__(self, clip: nn.Module, context_length: int, preprocess: Preprocess, spec: BackboneSpec):
        import open_clip

        super().__init__()
        self.clip = clip
        self.spec = spec
        self.preprocess = preprocess
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.text = PromptTextEncoder(clip)
        self.image = PromptImageEncoder(clip.visual)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    # -- facts
    @property
    def embed_dim(self) -> int:
        proj = self.clip.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else int(proj.shape[1])

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.weight.shape[1])

    @property
    def vision_width(self) -> int:
        return self.image.width

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.token_embedding.weight.dtype

    @property
    def quick_gelu(self) -> bool:
        """The towers use QuickGELU (OpenAI's weights need it; same weights, other activation = another model)."""
        import open_clip

        return any(isinstance(m, open_clip.transformer.QuickGELU) for m in self.clip.modules())

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def train(self, mode: bool = True):  # the frozen CLIP always stays in eval mode
        super().train(mode)
        self.clip.eval()
        return self

    # -- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.clip.token_embedding.weight.device)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip.token_embedding(ids)

    def n_tokens(self, text: str) -> int:
        """BPE tokens of ``text`` without SOS/EOT."""
        return len(self.tokenizer.encode(text))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenize(texts)
        return self.text(self.token_embedding(ids), ids.argmax(dim=-1), shared=common_prefix(ids))

    # -- images
    def encode_image(self, images: torch.Tensor, prompts=None, deep=None) -> torch.Tensor:
        return self.image(images, prompts, deep)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def fingerprint(self, rounding: torch.dtype | None = None) -> str:
        """Hash of the weights (for feature-cache keys). ``rounding=torch.float16`` hashes them as fp16
        values, so a copy of the same weights moved to fp16 (``precision=fp16``) keeps its fingerprint."""
        h = hashlib.sha256()
        for k, v in sorted(self.clip.state_dict().items()):
            t = (v.detach() if rounding is None else v.detach().to(rounding)).float().cpu().contiguous()
            h.update(k.encode())
            h.update(t.flatten()[:: max(1, t.numel() // 4096)].numpy().tobytes())
        return h.hexdigest()[:16]


def describe_weights(name: str, pretrained: str, weights: str | None) -> str:
    """What ``load_backbone`` will load, in words (for the "loading backbone …" line)."""
    if weights:
        return f"weights {weights}"
    if name == "tiny" or pretrained in ("none", "random", ""):
        return "random weights"
    if name == "toy":
        return "embedded toy weights"
    if name.startswith("local-dir:"):
        return f"weights in {name[len('local-dir:'):]}"
    return f"{pretrained} weights"


def check_backbone(name: str, pretrained: str, weights: str | None) -> None:
    """The cheap checks of a backbone (name, pretrained tag, a readable --weights file), for the
    launchers to fail once before any job is dispatched; ``load_backbone`` is the full check."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file")
        if path.suffix == ".safetensors":
            _read_safetensors(path, header_only=True)
    if name in ("toy", "tiny"):
        return
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"local-dir:{folder}: no open_clip_config.json in that folder")
        return
    import open_clip

    if name not in open_clip.list_models():
        raise UserError(f"unknown backbone {name!r}; use `toy`, `local-dir:PATH` or an open_clip model "
                        f"name such as ViT-B-16 (see `cpbench list`)")
    if weights or pretrained in ("none", "random", "") or Path(pretrained).is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UserError(f"{name} has no pretrained weights {pretrained!r}; use one of {', '.join(tags) or 'none'} "
                        "(or --weights PATH)")


def load_backbone(name: str = "ViT-B-16", pretrained: str = "openai", weights: str | None = None,
                  seed: int = 0) -> Backbone:
    spec = BackboneSpec(name, pretrained, weights)
    torch.manual_seed(seed)  # random-weight backbones are reproducible
    if name == "toy":
        model, ctx, pre = _toy(spec)
    elif name == "tiny":
        model, ctx, pre = _tiny(spec)
    elif name.startswith("local-dir:"):
        model, ctx, pre = _local_dir(Path(name[len("local-dir:"):]).expanduser(), spec)
    else:
        model, ctx, pre = _open_clip(spec)
    return Backbone(model, ctx, pre, spec)
