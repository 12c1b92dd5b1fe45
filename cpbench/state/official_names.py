"""The official checkpoint formats and their names: which Dassl model folder each method's file sits
in, whether it holds the prompt learner or the whole model, what it holds that is not imported, and
the official name of every learned tensor of a cpbench method (the mapping is described in
``cpbench/state/official.py``)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cpbench.errors import UserError

PREFIX = "prompt_learner."


@dataclass(frozen=True)
class Format:
    module: str                        # Dassl model name: the folder of model.pth.tar-<epoch>
    whole_model: bool                  # the file holds the whole CustomCLIP (else the prompt learner)
    ignore: tuple[str, ...] = ()       # official names (fnmatch) that hold no state to import
    anchors: tuple[str, ...] = ()      # official names every file of this method has (checked early)
    own: tuple[str, ...] = ()          # cpbench keys not in the official file (bookkeeping: keep own)
    file_prefix: str = PREFIX          # a non-whole-model file's keys are official names after this prefix
    key_prefix: str = PREFIX           # a cpbench key's official name is this prefix + the key


_PL_IGNORE = (PREFIX + "token_prefix", PREFIX + "token_suffix", PREFIX + "token_midfix")
_PL = dict(module="prompt_learner", whole_model=False, ignore=_PL_IGNORE)
_MAPLE = dict(module="MultiModalPromptLearner", whole_model=True,
              ignore=_PL_IGNORE + (PREFIX + "token_suffix_test",))
_VL = dict(module="VLPromptLearner", whole_model=True, ignore=_PL_IGNORE + (PREFIX + "ZS_image_encoder.*",))

FORMATS: dict[str, Format] = {
    "coop": Format(**_PL, anchors=(PREFIX + "ctx",)),
    "cocoop": Format(**_PL, anchors=(PREFIX + "ctx", PREFIX + "meta_net.linear1.weight")),
    "kgcoop": Format(**{**_PL, "ignore": _PL_IGNORE + (PREFIX + "bias_vectors", PREFIX + "meta_net.*")},
                     anchors=(PREFIX + "ctx",)),
    "pre": Format(**_PL, anchors=(PREFIX + "ctx",)),
    "lamm": Format(**{**_PL, "ignore": _PL_IGNORE + (PREFIX + "token_suffix_test",)},
                   anchors=(PREFIX + "ctx", PREFIX + "token_classes")),
    "coop_lamm": Format(**{**_PL, "ignore": _PL_IGNORE + (PREFIX + "token_suffix_test",)},
                        anchors=(PREFIX + "ctx", PREFIX + "token_classes")),
    "coopvpt": Format(**_PL, anchors=(PREFIX + "ctx", PREFIX + "mean_posterior")),
    "cocoopvpt": Format(**_PL, anchors=(PREFIX + "ctx", PREFIX + "meta_net.weight_mean.module.0.weight")),
    "cpl": Format(**_PL, anchors=(PREFIX + "ctx", PREFIX + "u")),
    "maple": Format(**_MAPLE, anchors=(PREFIX + "ctx", PREFIX + "proj.weight")),
    "maple_lamm": Format(**_MAPLE, anchors=(PREFIX + "ctx", PREFIX + "proj.weight", PREFIX + "token_classes")),
    "ivlp": Format(**_VL, anchors=(PREFIX + "ctx",)),
    "promptsrc": Format(**_VL, anchors=(PREFIX + "ctx",), own=("gpa_*",)),
    "prograd": Format(**_PL, anchors=(PREFIX + "ctx",)),
    # CLIP_Adapter registers CustomCLIP.adapter as "clip_adapter": its file holds fc.0/fc.2.weight
    "clip_adapter": Format(module="clip_adapter", whole_model=False, file_prefix="adapter.", key_prefix="",
                           anchors=("adapter.fc.0.weight", "adapter.fc.2.weight")),
}


def format_of(method: str) -> Format:
    """The official format of ``method``, or one line naming the methods that have one."""
    if method not in FORMATS:
        raise UserError(f"--from-official: {method} has no official checkpoint format to import; "
                        f"methods with one: {', '.join(sorted(FORMATS))}")
    return FORMATS[method]


def file_names(fmt: Format, sd: dict) -> dict[str, torch.Tensor]:
    """A file's tensors by official name (``prompt_learner.`` added for prompt-learner files)."""
    return {(k if fmt.whole_model else fmt.file_prefix + k): v for k, v in sd.items()}


@dataclass
class _Slot:
    key: str                  # cpbench learned_state key
    index: int | None = None  # slice of a stacked tensor (deep prompts)


def official_names(method_name: str, state: dict[str, torch.Tensor]) -> dict[str, _Slot]:
    """Official name of every learned tensor of a cpbench method (its ``learned_state``)."""
    fmt = format_of(method_name)
    out: dict[str, _Slot] = {}
    for key, value in state.items():
        if any(fnmatch.fnmatchcase(key, p) for p in fmt.own):
            continue
        if fmt.module == "VLPromptLearner" and key in ("VPT", "deep_text", "deep_vision"):
            if key == "VPT":
                out["image_encoder.VPT"] = _Slot(key)
            else:
                tower = "text_encoder" if key == "deep_text" else "image_encoder"
                for i in range(value.shape[0]):
                    out[f"{tower}.transformer.resblocks.{i + 1}.VPT_shallow"] = _Slot(key, i)
            continue
        out[fmt.key_prefix + key] = _Slot(key)
    return out


def _unused_deep_prompt(name: str, method) -> bool:
    """MaPLe creates depth-1 deep prompts whatever the towers' depth; those for layers the backbone
    does not have are never used by the official forward either."""
    m = re.fullmatch(r"prompt_learner\.compound_prompt(?:s_text|_projections)\.(\d+)(?:\.\w+)?", name)
    if not m:
        return False
    layers = max(method.backbone.text_layers, method.backbone.vision_layers)
    return int(m.group(1)) + 1 >= layers


def _learnable_looking(fmt: Format, name: str) -> bool:
    return not fmt.whole_model or name.startswith(PREFIX) or "VPT" in name


def map_state(path: Path, method_name: str, method, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tensors (by official name) -> exactly ``method.learned_state()``'s keys, or one
    line naming what does not fit."""
    fmt = format_of(method_name)
    own = method.learned_state()
    names = official_names(method_name, own)
    missing = [n for n in names if n not in tensors]
    unexpected = [n for n in tensors if n not in names and _learnable_looking(fmt, n)
                  and not any(fnmatch.fnmatchcase(n, p) for p in fmt.ignore) and not _unused_deep_prompt(n, method)]
    shapes = []
    out = {k: v.detach().clone().cpu() for k, v in own.items()}
    for name, slot in names.items():
        if name not in tensors:
            continue
        dst = out[slot.key] if slot.index is None else out[slot.key][slot.index]
        src = tensors[name]
        if tuple(src.shape) != tuple(dst.shape):
            shapes.append(f"{name} is {tuple(src.shape)} in the file, {tuple(dst.shape)} here")
            continue
        dst.copy_(src.to(dst.dtype))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("missing " + few(missing))
        if unexpected:
            parts.append("unexpected " + few(unexpected))
        parts.extend(shapes[:3])
        raise UserError(f"{path} does not fit {method_name}: {'; '.join(parts)}; set the method options to the "
                        "checkpoint's config (--set method.<option>=…) or import it as the method that wrote it")
    return out


def few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
