"""Loading a frozen open_clip CLIP and exposing what prompt methods need.

Backbone names:
- ``toy``: the embedded tiny CLIP shipped with cpbench (offline, CPU-friendly);
- ``tiny``: a very small random-weight CLIP for tests and smoke runs;
- any open_clip model name (``ViT-B-16``, ``EVA02-B-16``, ``ViT-B-16-SigLIP``, ``coca_ViT-B-32``
  …) with a pretrained tag (``openai`` …), ``none`` for random weights, or ``--weights PATH`` for
  a local checkpoint; each with its own tokenizer and preprocessing (``tokenizers.py``;
  ``Preprocess.from_open_clip``) and the model class open_clip's factory picks (CLIP,
  CustomTextCLIP, CoCa);
- ``local-dir:PATH``: a folder with ``open_clip_config.json`` and weights (and the tokenizer
  files when its config names a Hugging Face tokenizer).

What each family's towers allow (text prompts, deep prompts, visual prompts) is decided from the
config before loading (``families.py``) and checked again on the built model (``Backbone.facts``).

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
from cpbench.models import families
from cpbench.models.families import TINY_CFG
from cpbench.models.text import PromptTextEncoder, common_prefix, text_tower
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
    # open_clip's test-time resize: shortest (resize the short side, center crop), squash (resize
    # to a square, SigLIP's), longest (fit the long side, pad with fill_color)
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_open_clip(cls, cfg: dict, size: int | None = None) -> "Preprocess":
        """From an open_clip ``preprocess_cfg`` (``model.visual.preprocess_cfg``, PreprocessCfg's
        fields); ``size`` overrides its ``size``."""
        size = cfg.get("size", 224) if size is None else size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
        mean = tuple(mean) if isinstance(mean, (tuple, list)) else (float(mean),) * 3
        std = tuple(std) if isinstance(std, (tuple, list)) else (float(std),) * 3
        mode = cfg.get("resize_mode") or "shortest"
        if mode not in ("shortest", "squash", "longest"):
            raise UserError(f"preprocess resize_mode {mode!r} is not one of shortest, squash, longest")
        return cls(int(size), mean, std, cfg.get("interpolation") or "bicubic", resize_mode=mode,
                   fill_color=int(cfg.get("fill_color") or 0))


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


MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "multimodal_cfg", "init_logit_scale", "init_logit_bias",
              "nonscalar_logit_scale")


def build_model(cfg: dict, quick_gelu: bool = False) -> nn.Module:
    """A random-weight model from an open_clip model config, of the class open_clip's factory picks
    for it: CoCa (``multimodal_cfg``), CustomTextCLIP (``custom_text`` or a Hugging Face text
    tower) or CLIP; no pretrained tower weights (a Hugging Face text tower is built from its
    config)."""
    import copy

    import open_clip

    cfg = copy.deepcopy(cfg)
    text = cfg["text_cfg"]
    if text.get("hf_model_name"):
        text["hf_model_pretrained"] = False
    if cfg.get("vision_cfg", {}).get("timm_model_name"):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    kwargs = {k: cfg[k] for k in MODEL_KEYS if k in cfg}
    if cfg.get("multimodal_cfg"):
        cls = open_clip.CoCa
    elif cfg.get("custom_text") or text.get("hf_model_name"):
        cls = open_clip.CustomTextCLIP
    else:
        cls = open_clip.model.CLIP
    return cls(**kwargs, quick_gelu=quick_gelu or bool(cfg.get("quick_gelu", False)))


def _build_from_cfg(cfg: dict, quick_gelu: bool) -> nn.Module:
    return build_model(cfg, quick_gelu)


def _crop_scale(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def toy_fingerprint() -> str:
    """A short digest of the embedded toy backbone's config (which records its pretraining run)."""
    return hashlib.sha256((TOY_DIR / "toy_clip.json").read_bytes()).hexdigest()[:12]


def _toy(spec: BackboneSpec) -> tuple[nn.Module, dict, Preprocess]:
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
    return model, cfg, pre


LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")


def local_dir_weights(path: Path) -> Path | None:
    """The weights file a ``local-dir:PATH`` backbone loads (the first of LOCAL_DIR_WEIGHTS present)."""
    return next((path / f for f in LOCAL_DIR_WEIGHTS if (path / f).exists()), None)


def _local_dir(path: Path, spec: BackboneSpec) -> tuple[nn.Module, dict, Preprocess]:
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.exists():
        raise UserError(f"local-dir:{path}: no open_clip_config.json in that folder")
    cfg = json.loads(cfg_file.read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    weights = local_dir_weights(path)
    if weights is None:
        raise UserError(f"local-dir:{path}: no weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    model = _build_from_cfg(model_cfg, model_cfg.get("quick_gelu", False) or spec.quick_gelu)
    _load_into(model, _load_state(weights), str(weights), f"local-dir:{path}'s config")
    size = model_cfg["vision_cfg"].get("image_size", 224)
    pre = Preprocess.from_open_clip(cfg.get("preprocess_cfg", {}), size if isinstance(size, int) else size[0])
    return model, model_cfg, pre


def _tiny(spec: BackboneSpec) -> tuple[nn.Module, dict, Preprocess]:
    model = _build_from_cfg(TINY_CFG, False)
    if spec.weights:
        _load_into(model, _load_state(Path(spec.weights)), f"--weights {spec.weights}", "the tiny backbone")
    return model, TINY_CFG, Preprocess(32, OPENAI_MEAN, OPENAI_STD)


def _open_clip(spec: BackboneSpec, plans: dict[str, str]) -> tuple[nn.Module, dict, Preprocess]:
    import open_clip

    if spec.name not in open_clip.list_models():
        raise UserError(f"unknown backbone {spec.name!r}; use `toy`, `local-dir:PATH` or an open_clip model "
                        f"name such as ViT-B-16 (see `cpbench list --backbones`)")
    cfg = open_clip.get_model_config(spec.name)
    pretrained = None if (spec.weights or spec.pretrained in ("none", "random", "")) else spec.pretrained
    fix = "pass --weights PATH to a local checkpoint, or use --backbone toy (the embedded offline backbone)"
    how = "download"
    if pretrained is not None and not Path(pretrained).is_file():
        from cpbench.models import hub

        how = hub.plan(open_clip.get_pretrained_cfg(spec.name, pretrained))
        if how.startswith("unavailable"):
            raise UserError(f"cannot load {spec.name} weights {spec.pretrained!r}: {how.split(': ', 1)[1]}; {fix}")
    tower_plan = plans.get(cfg["text_cfg"].get("hf_model_name") or "")   # a Hugging Face text tower's config
    offline = tower_plan == "cache" if pretrained is None else how == "cache" and tower_plan in (None, "cache")
    logging.disable(logging.ERROR)  # open_clip logs download failures itself; we say it in one line
    try:
        from contextlib import nullcontext

        from cpbench.models import hub

        with hub.hub_offline() if offline else nullcontext():
            # pretrained_text=False: a Hugging Face text tower starts random too (its weights come with the
            # checkpoint), as the image tower does; open_clip would otherwise fetch the HF model's own weights
            model = open_clip.create_model(spec.name, pretrained=pretrained, force_quick_gelu=spec.quick_gelu,
                                           pretrained_text=False)
    except Exception as exc:  # offline, unknown tag, hub errors
        raise UserError(
            f"cannot load {spec.name} weights {spec.pretrained!r} ({exc.__class__.__name__}): offline? {fix}"
        ) from None
    finally:
        logging.disable(logging.NOTSET)
    if spec.weights:
        _load_into(model, _load_state(Path(spec.weights)), f"--weights {spec.weights}", spec.name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pre = Preprocess.from_open_clip(getattr(model.visual, "preprocess_cfg", {}) or {}, int(size))
    return model, cfg, pre


class Backbone(nn.Module):
    """A frozen open_clip model with prompt-aware encoders, its tokenizer and preprocessing facts.

    ``text`` is None for a Hugging Face text tower (``encode_text`` then runs the model's own);
    ``facts`` says what its towers allow (``families.Facts``), from the built modules."""

    def __init__(self, clip: nn.Module, context_length: int, preprocess: Preprocess, spec: BackboneSpec,
                 tokenizer=None, config: dict | None = None):
        super().__init__()
        self.clip = clip
        self.spec = spec
        self.preprocess = preprocess
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            from cpbench.models.tokenizers import PromptTokenizer

            tokenizer = PromptTokenizer(SimpleTokenizer(context_length=context_length))
        self.tokenizer = tokenizer
        self.text = PromptTextEncoder(clip, tokenizer.start) if text_tower(clip) is not None else None
        self.image = PromptImageEncoder(clip.visual)
        self.facts = self._facts(config)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    def _facts(self, config: dict | None) -> families.Facts:
        """What the built towers allow; the names (family, image tower) as the config gives them."""
        hf = getattr(self.tokenizer, "hf", None)
        t = self.text
        named = families.facts_from_config(self.spec.name, config) if config else None
        return families.Facts(
            family=named.family if named else "custom",
            text="transformer" if t is not None else "hf", causal=bool(t is not None and t.causal),
            pool=t.pool if t is not None else "hf",
            tokenizer=getattr(hf, "name_or_path", "Hugging Face") if hf is not None else "CLIP BPE",
            image=named.image if named else type(getattr(self.clip.visual, "trunk", self.clip.visual)).__name__,
            image_prompts=self.image.supports_prompts)

    # -- facts
    def _tower(self) -> nn.Module:
        return text_tower(self.clip) or self.clip.text

    @property
    def embed_dim(self) -> int:
        if self.text is None:
            return int(self.clip.text.output_dim)
        proj = self.text.text_projection
        if proj is None:
            return self.text_width
        return proj.out_features if isinstance(proj, nn.Linear) else int(proj.shape[1])

    @property
    def text_width(self) -> int:
        return int(self.text.positional_embedding.shape[1]) if self.text is not None else 0

    @property
    def vision_width(self) -> int:
        return self.image.width

    @property
    def text_layers(self) -> int:
        return len(self.text.transformer.resblocks) if self.text is not None else 0

    @property
    def vision_layers(self) -> int:
        return self.image.layers

    @property
    def text_start(self) -> int:
        """Position of the first word in a tokenised prompt (1 after CLIP's start token)."""
        return int(self.tokenizer.start)

    @property
    def dtype(self) -> torch.dtype:
        if self.text is None:
            return next(self.clip.text.parameters()).dtype
        return self._tower().token_embedding.weight.dtype

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
    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self._device())

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self._tower().token_embedding(ids)

    def n_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens (start, end, padding)."""
        return self.tokenizer.n_tokens(text)

    def eot(self, ids: torch.Tensor) -> torch.Tensor:
        """Each row's end of text, where the text tower pools: the argmax (CLIP's end token has the
        highest id), the first EOS (``pool_type='eos'``), else the last token that is not padding."""
        pool = self.text.pool if self.text is not None else "last"
        if pool == "argmax":
            return ids.argmax(dim=-1)
        if pool == "eos" and self.text.eos_id is not None:
            return (ids == self.text.eos_id).int().argmax(dim=-1)
        real = (ids != self.tokenizer.pad_id).int()
        return ids.shape[-1] - 1 - real.flip(-1).argmax(dim=-1)

    def encode_ids(self, ids: torch.Tensor, encoder: PromptTextEncoder | None = None, dtype=None) -> torch.Tensor:
        """Text features of token ids through the prompt-aware encoder (``encoder``: a copy of
        ``text``, e.g. a float one), or through the model's own ``encode_text`` for a Hugging Face
        text tower."""
        if self.text is None:
            return self.clip.encode_text(ids, normalize=False)
        emb = self.token_embedding(ids)
        eot = self.eot(ids)
        return (encoder or self.text)(emb if dtype is None else emb.to(dtype), eot, shared=common_prefix(ids, eot))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode_ids(self.tokenize(texts))

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


def model_config_or_none(name: str) -> dict | None:
    """The model config ``name`` stands for, or None where it names none (a moved local-dir)."""
    try:
        return families.model_config(name)
    except UserError:
        return None


def local_folder(name: str) -> Path | None:
    return Path(name[len("local-dir:"):]).expanduser() if name.startswith("local-dir:") else None


def check_backbone(name: str, pretrained: str, weights: str | None) -> None:
    """The cheap checks of a backbone (name, pretrained tag, a readable --weights file, its
    tokenizer to be had offline), for the launchers to fail once before any job is dispatched;
    ``load_backbone`` is the full check."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file")
        if path.suffix == ".safetensors":
            _read_safetensors(path, header_only=True)
    if name in ("toy", "tiny"):
        return
    from cpbench.models import tokenizers

    if name.startswith("local-dir:"):
        tokenizers.check(name, families.model_config(name), local_folder(name))
        return
    import open_clip

    if name not in open_clip.list_models():
        raise UserError(f"unknown backbone {name!r}; use `toy`, `local-dir:PATH` or an open_clip model "
                        f"name such as ViT-B-16 (see `cpbench list --backbones`)")
    tokenizers.check(name, families.model_config(name))
    if weights or pretrained in ("none", "random", "") or Path(pretrained).is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UserError(f"{name} has no pretrained weights {pretrained!r}; use one of {', '.join(tags) or 'none'} "
                        "(or --weights PATH)")


def load_backbone(name: str = "ViT-B-16", pretrained: str = "openai", weights: str | None = None,
                  seed: int = 0) -> Backbone:
    from cpbench.models import tokenizers

    spec = BackboneSpec(name, pretrained, weights)
    # a tokenizer that cannot be had (or the package it needs) fails before any model is built
    plans = {} if name in ("toy", "tiny") else tokenizers.check(name, families.model_config(name), local_folder(name))
    torch.manual_seed(seed)  # random-weight backbones are reproducible
    if name == "toy":
        model, cfg, pre = _toy(spec)
    elif name == "tiny":
        model, cfg, pre = _tiny(spec)
    elif name.startswith("local-dir:"):
        model, cfg, pre = _local_dir(local_folder(name), spec)
    else:
        model, cfg, pre = _open_clip(spec, plans)
    tok = tokenizers.load(name, cfg, local_folder(name), plans)
    return Backbone(model, tok.context_length, pre, spec, tokenizer=tok, config=cfg)
