"""Method names -> implementing classes. A plain dict of import paths, resolved on use, so
nothing registers itself by being imported."""

from __future__ import annotations

import importlib

from cpbench.errors import UserError

METHODS: dict[str, str] = {
    "zeroshot": "cpbench.methods.zeroshot:ZeroShotCLIP",
    "coop": "cpbench.methods.coop:CoOp",
    "lamm": "cpbench.methods.lamm:LAMM",
    "coop_lamm": "cpbench.methods.lamm:CoOpLAMM",
    "maple_lamm": "cpbench.methods.lamm:MaPLeLAMM",
    "coopvpt": "cpbench.methods.bpl:CoOpVPT",
    "cocoopvpt": "cpbench.methods.bpl:CoCoOpVPT",
    "pre": "cpbench.methods.pre:PRE",
    "cpl": "cpbench.methods.cpl:CPL",
    "cocoop": "cpbench.methods.cocoop:CoCoOp",
    "ivlp": "cpbench.methods.ivlp:IVLP",
    "maple": "cpbench.methods.maple:MaPLe",
    "promptsrc": "cpbench.methods.promptsrc:PromptSRC",
    "kgcoop": "cpbench.methods.kgcoop:KgCoOp",
    "linear_probe": "cpbench.methods.linear_probe:LinearProbe",
    "prograd": "cpbench.methods.prograd:ProGrad",
    "clip_adapter": "cpbench.methods.clip_adapter:CLIPAdapter",
    "tip_adapter": "cpbench.methods.tip_adapter:TipAdapter",
    "tip_adapter_f": "cpbench.methods.tip_adapter_f:TipAdapterF",
    "clip_lora": "cpbench.methods.clip_lora:CLIPLoRA",
}


def method_names() -> list[str]:
    return sorted(METHODS)


def check_method_name(name: str) -> None:
    """A known method name, or one line saying which are known (imports nothing: no torch)."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")


def get_method_class(name: str):
    check_method_name(name)
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


# The order of methods in reports (rows and column groups): zero-shot CLIP first, then the order
# the papers' tables use (CoOp, CoCoOp, ProGrad, KgCoOp, MaPLe, IVLP, PromptSRC, the LAMM variants,
# PRE, Bayesian PL, CPL), then the few-shot adapter baselines in the order of the CLIP-LoRA paper's
# table (CLIP-Adapter, Tip-Adapter, Tip-Adapter-F, CLIP-LoRA), linear-probe CLIP last. A method not
# listed here follows, alphabetically.
REPORT_ORDER = ("zeroshot", "coop", "cocoop", "prograd", "kgcoop", "maple", "ivlp", "promptsrc", "lamm", "coop_lamm",
                "maple_lamm", "pre", "coopvpt", "cocoopvpt", "cpl", "clip_adapter", "tip_adapter", "tip_adapter_f",
                "clip_lora", "linear_probe")


def report_rank(name: str) -> tuple[int, str]:
    return (REPORT_ORDER.index(name) if name in REPORT_ORDER else len(REPORT_ORDER), name)
