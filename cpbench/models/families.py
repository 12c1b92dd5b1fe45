"""What a backbone's towers let prompt methods do, decided from its model config alone (no torch,
no weights), so a method that cannot run on it is refused before anything loads.

``facts(name)`` reads the config (open_clip's built-in JSON, a ``local-dir:`` folder's
``open_clip_config.json``, the embedded toy or tiny CLIP) and says:

- text tower: open_clip's own transformer (every family but the Hugging Face towers) or a Hugging
  Face model (roberta, xlm-roberta, mt5, nllb). cpbench's prompt-aware text encoder drives the
  first kind exactly as its ``encode_text`` (causal or not, pooling by argmax/EOS, last or first
  token or CoCa's appended class token, its norm, projection and tokenizer); it cannot feed
  embeddings or deep prompts into a Hugging Face model;
- image tower: deep visual prompts (MaPLe, IVLP, PromptSRC, MaPLe+LAMM) go into open_clip's own
  ViT and timm's ``VisionTransformer`` and ``Eva`` trunks (SigLIP, EVA01/02, PE-Core, ViTamin and
  MobileCLIP-B/L, whose convolutional stems feed plain ViT blocks); a ResNet, ConvNeXt, FastViT
  (MobileCLIP-S*), Swin or timm's relative-position ViT has no plain token sequence to put them in.

Methods declare what they need as class flags (``methods/base.py``: ``text_prompts``,
``deep_text_prompts``, ``vision_prompts``); ``unsupported(method, facts)`` gives the one-line
reason a method cannot run on a backbone. ``table(methods)`` is ``cpbench list --backbones``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from cpbench.errors import UserError

TOY_CONFIG = Path(__file__).parent / "toy" / "toy_clip.json"

# A very small random CLIP for tests and smoke runs (``--backbone tiny``): always random weights.
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# timm image trunks by model-name prefix (longest match first): the class timm builds and whether
# visual prompts fit in it. tests/test_backbone_families.py checks this table against timm's own
# registry for every timm model an open_clip config names.
TIMM_TRUNKS = (
    ("vit_relpos_", "timm VisionTransformerRelPos", False),
    ("vit_pe_", "timm Eva (PE)", True),
    ("eva", "timm Eva", True),
    ("vitamin_", "timm VisionTransformer (MbConv stem)", True),
    ("vit_", "timm VisionTransformer", True),
    ("fastvit_", "FastViT", False),
    ("convnext", "ConvNeXt", False),
    ("swin", "Swin", False),
)
PROMPTABLE_IMAGE_FAMILIES = ("CLIP ViT, CLIPA, CoCa, EVA, MetaCLIP 2, MobileCLIP-B/L, PE-Core, SigLIP, SigLIP 2, "
                             "ViTamin, timm ViT")


@dataclass(frozen=True)
class Facts:
    """What one backbone offers prompt methods (see the module docstring)."""

    family: str
    text: str            # "transformer" (open_clip's own) | "hf" (a Hugging Face model)
    causal: bool         # the text tower's causal mask
    pool: str            # argmax | eos | last | first | cls (CoCa's appended class token)
    tokenizer: str       # "CLIP BPE" or the Hugging Face tokenizer's name
    image: str           # the image tower, in words
    image_prompts: bool  # deep visual prompts fit in it

    @property
    def text_prompts(self) -> bool:
        return self.text == "transformer"

    def text_words(self) -> str:
        if self.text == "hf":
            return "Hugging Face model"
        return f"{'causal' if self.causal else 'bidirectional'}, pool {self.pool}"


def _open_clip_config_dir() -> Path:
    """open_clip's model_configs folder, found without importing open_clip (and torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("open_clip is not installed; pip install open_clip_torch")
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _open_clip_config_dir().glob("*.json"))


def model_config(name: str) -> dict:
    """The model config a backbone name stands for (``model_cfg`` of a local-dir config)."""
    if name == "tiny":
        return TINY_CFG
    if name == "toy":
        return json.loads(TOY_CONFIG.read_text())
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):]).expanduser() / "open_clip_config.json"
        if not path.is_file():
            raise UserError(f"{name}: no open_clip_config.json in that folder")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
        return cfg.get("model_cfg", cfg)
    path = _open_clip_config_dir() / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown backbone {name!r}; use `toy`, `local-dir:PATH` or an open_clip model name such "
                        "as ViT-B-16 (see `cpbench list --backbones`)")
    return json.loads(path.read_text())


def widest_tower(name: str) -> int | None:
    """The width of a backbone's widest transformer/ResNet tower, from its config alone (no
    import of torch): what tells whether its ops gain from several CPU threads (cpbench/threads.py).
    None when the config does not say (Hugging Face and timm towers) or the name is unknown."""
    try:
        cfg = model_config(name)
    except UserError:
        return None
    widths = [c.get("width") for c in (cfg.get("text_cfg") or {}, cfg.get("vision_cfg") or {})]
    widths = [w for w in widths if isinstance(w, int)]
    return max(widths) if widths else None


def timm_trunk(model_name: str) -> tuple[str, bool]:
    """(the timm class, visual prompts fit) for a timm image model name."""
    for prefix, kind, ok in TIMM_TRUNKS:
        if model_name.startswith(prefix):
            return kind, ok
    return f"timm {model_name}", False


def family(name: str, cfg: dict) -> str:
    """The family a model belongs to, by its name and config (a ``local-dir:`` config by its shape)."""
    t, v = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    n = f"{name} {t.get('hf_tokenizer_name') or ''}".lower()
    tm = v.get("timm_model_name") or ""
    if cfg.get("multimodal_cfg"):
        return "CoCa"
    if t.get("hf_model_name"):
        return "Hugging Face text tower"
    if "siglip2" in n:
        return "SigLIP 2"
    if "siglip" in n:
        return "SigLIP"
    if tm.startswith("eva"):
        return "EVA"
    if "mobileclip" in n or "_mci" in tm:
        return "MobileCLIP"
    if tm.startswith("vit_pe_") or "pe-core" in n:
        return "PE-Core"
    if "clipa" in n or (v.get("final_ln_after_pool") and v.get("pool_type") == "avg"):
        return "CLIPA"
    if "worldwide" in n or t.get("pool_type") == "eos":
        return "MetaCLIP 2"
    for prefix, fam in (("vitamin_", "ViTamin"), ("convnext", "ConvNeXt"), ("swin", "Swin")):
        if tm.startswith(prefix):
            return fam
    if tm:
        return "timm ViT"
    if isinstance(v.get("layers"), (list, tuple)):
        return "ResNet"
    return "CLIP ViT"


def facts_from_config(name: str, cfg: dict) -> Facts:
    t, v = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    if t.get("hf_model_name"):
        text, causal, pool = "hf", False, "hf"
    else:
        text, causal = "transformer", not t.get("no_causal_mask", False)
        pool = "cls" if t.get("embed_cls") else t.get("pool_type", "argmax")
    tokenizer = t.get("hf_tokenizer_name") or "CLIP BPE"
    if v.get("timm_model_name"):
        image, prompts = timm_trunk(v["timm_model_name"])
    elif isinstance(v.get("layers"), (list, tuple)):
        image, prompts = "ModifiedResNet", False
    else:
        image, prompts = "open_clip VisionTransformer", True
    return Facts(family(name, cfg), text, causal, pool, tokenizer, image, prompts)


def facts(name: str) -> Facts:
    return facts_from_config(name, model_config(name))


def unsupported(method, f: Facts, backbone: str = "this backbone") -> str:
    """Why ``method`` (a Method class: its ``text_prompts`` / ``deep_text_prompts`` /
    ``vision_prompts`` flags and its ``backbone_unsupported``, all declared in methods/base.py)
    cannot run on a backbone with facts ``f`` (one line); "" if it can."""
    name = method.name
    if (method.text_prompts or method.deep_text_prompts) and not f.text_prompts:
        return (f"{name} feeds learned token embeddings to the text tower; {backbone}'s text tower is a Hugging Face "
                "model (roberta / xlm-roberta / mt5 / nllb), which cpbench's prompt-aware text encoder cannot drive; "
                "use zeroshot or linear_probe on it, or a backbone with an open_clip text transformer "
                "(see `cpbench list --backbones`)")
    if method.vision_prompts and not f.image_prompts:
        return (f"{name} inserts prompts into the image tower's transformer layers; {backbone}'s image tower "
                f"({f.image}, {f.family} family) has no plain token sequence to take them; use a backbone with a ViT "
                f"image tower ({PROMPTABLE_IMAGE_FAMILIES}) or a text-side method such as coop, cocoop or kgcoop")
    return method.backbone_unsupported(f, backbone)   # a method's own need of the towers (CLIP-LoRA)


def check_methods(backbone: str, methods) -> None:
    """One line for the first of ``methods`` (Method classes) that cannot run on ``backbone``."""
    f = facts(backbone)
    for m in methods:
        why = unsupported(m, f, backbone)
        if why:
            raise UserError(why)


def table(methods: dict) -> list[dict]:
    """``cpbench list --backbones``: open_clip's models grouped by family and by what their towers
    allow, with the methods (``{name: Method class}``) each group runs."""
    groups: dict[tuple, list[str]] = {}
    for name in builtin_names():
        f = facts(name)
        groups.setdefault((f.family, f.text_words(), f.image, f.image_prompts, f.text_prompts), []).append(name)
    rows = []
    for (fam, text, image, _, _), names in sorted(groups.items()):
        f = facts(names[0])
        ok = [m for m, cls in sorted(methods.items()) if not unsupported(cls, f)]
        refused = sorted(set(methods) - set(ok))
        runs = ("all" if not refused else f"only {', '.join(ok)}" if len(ok) < len(refused)
                else f"all but {', '.join(refused)}")
        rows.append({"family": fam, "models": names, "text": text, "image": image, "methods": runs})
    return rows
