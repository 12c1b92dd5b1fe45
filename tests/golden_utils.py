"""Golden-equivalence harness: compare a cpbench method with the OFFICIAL implementation's numbers.

The files in ``tests/golden/`` (see ``tests/golden/README.md``) hold the eval logits, every
training loss term (unweighted) and gradient summaries that the official code produced for a
small random CLIP. Everything needed to rebuild that setting is here:

- ``wgen`` — the weight generator of the README, bit for bit (checked by sha256);
- ``golden_backbone(case)`` — an fp32 cpbench ``Backbone`` around the open_clip CLIP built from
  those weights (cached per shape, so several tests share one build);
- ``golden_inputs(case)`` — the fixed images, labels and class names;
- ``set_learnables(method, case, name_map)`` — the seeded learnable values, put into the cpbench
  method through a per-method map from OFFICIAL parameter name to cpbench parameter;
- ``eval_logits`` / ``train_step`` — one eval forward / one training forward+backward, each
  right after ``torch.manual_seed(<the case's forward seed>)`` as the official run;
- ``compare_logits`` / ``compare_losses`` / ``compare_grads`` — max |Δ| figures (never assert by
  themselves), and ``assert_close`` to check them against the tolerances;
- ``constructor_init_gaps`` (the method's own init vs the official constructor's, where recorded),
  ``golden_eps`` (BPL's recorded noise), ``full_report`` (all figures at once, for diagnosing).
  ``CPBENCH_GOLDEN_LOG=path pytest tests/test_golden_*.py`` logs every report as JSON lines.

If a method test fails but ``test_golden_backbone`` passes, the encoders are right and the gap is
in the method: ``full_report`` names the term and the parameter (per layer for deep prompts).

How to write a golden test for a method (``tests/test_golden_<method>.py``)::

    from golden_utils import (LOGIT_ATOL, LOSS_RTOL, GRAD_RTOL, Slot, assert_close, compare_grads,
                              compare_logits, compare_losses, eval_logits, golden_backbone,
                              golden_inputs, load_case, official_losses, set_learnables, train_step)
    from cpbench.methods.coop import CoOp, CoOpOptions

    NAME_MAP = {"prompt_learner.ctx": "ctx"}          # official name -> cpbench parameter (or Slot)

    def test_coop_L2():
        case = load_case("coop_L2")
        images, labels, classnames = golden_inputs(case)
        method = CoOp(golden_backbone(case), classnames, CoOpOptions(n_ctx=4, ctx_init=""))
        set_learnables(method, case, NAME_MAP)
        assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "logits")
        terms = train_step(method, images, labels, case)  # {term: weighted loss}, backward done
        L = official_losses(case)                         # {"ce": 2.5175…} short names, unweighted
        assert_close(compare_losses(terms, {"ce": L["ce"]}, case), LOSS_RTOL, "losses")
        assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "grads")

Name maps. A value is either a cpbench parameter name (``"ctx"``, ``"meta_net.0.weight"``), a
``Slot(name, index, to_cpbench, to_official)`` when one official tensor is a slice of a cpbench
tensor (e.g. deep prompts stacked as ``[depth-1, n, D]``: ``Slot("deep_text", 0)``) or needs a
reshape, or ``None`` when cpbench has no such parameter (then the official gradient must be
``null``: e.g. MaPLe's unused deep-prompt projections in a 2-layer model). Every trainable
cpbench parameter must be reached by the map, so nothing trainable is left at its own init.

Loss terms. ``train_step`` returns the method's *weighted* terms; ``official_losses(case)`` gives
the official *unweighted* calls by short name (``ce``, ``l1_text``, ``kl_sum``,
``feature_cos[0]`` …). The test writes the expected weighted value of each cpbench term from
those, e.g. PromptSRC ``{"ce": L["ce"], "text": 25 * L["l1_text"], ...}``; ``compare_losses``
also checks the sum of all terms against the official ``total_reported``.

Tolerances (README "Suggested tolerances", fp32 round-off between two different code paths):
logits ``LOGIT_ATOL`` = 1e-4 absolute (logits are of order 1-10, observed gaps ~5e-6); loss terms
``LOSS_RTOL`` = 1e-5 relative; gradients ``GRAD_RTOL`` = 1e-4 relative: ``l2`` relative to the
official ``l2``, ``sum`` relative to ``l2 * sqrt(numel)`` (the bound of |sum|: a gradient's sum
can cancel to ~0, e.g. CoOp's ctx), the first-32 entries relative to max |g| of the tensor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

LOGIT_ATOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4

# Every input of a case (image seed and size, labels, class names, learnable seed base, forward
# seed, weight generator seed) is read from its file, so a further case produced by the recipe in
# tests/golden/README.md (another base_seed, other labels or class names) needs no test edit.


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    data: dict

    @property
    def weights(self) -> dict:
        return self.data["weights"]

    @property
    def trainable(self) -> list[dict]:
        return self.data["trainable"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


@functools.lru_cache(maxsize=None)
def _read(name: str) -> dict:
    path = GOLDEN_DIR / f"{name}.json"
    return json.loads(path.read_text())


def load_case(name: str) -> Case:
    """``load_case("coop_L2")`` -> the parsed ``tests/golden/coop_L2.json``."""
    return Case(name, _read(name))


def golden_case_names() -> list[str]:
    return sorted(p.stem for p in GOLDEN_DIR.glob("*_L*.json") if not p.stem.startswith("weights_"))


# ----------------------------------------------------------------------------- weights
def wgen(shapes: Mapping[str, tuple], base_seed: int) -> dict[str, torch.Tensor]:
    """The README's weight generator, verbatim (each key seeded by crc32(key) + base_seed)."""
    sd = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key == "logit_scale":
            v = torch.tensor(math.log(100.0), dtype=torch.float32)
        else:
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()) + base_seed)
            n = torch.randn(shape, generator=g)
            if key.endswith("positional_embedding") or key.endswith("class_embedding") \
                    or key == "token_embedding.weight":
                v = 0.02 * n
            elif key in ("text_projection", "visual.proj"):
                v = float(shape[0]) ** -0.5 * n
            elif key.endswith("bias"):
                v = 0.02 * n
            elif key.split(".")[-2].startswith("ln_") and key.endswith(".weight"):
                v = 1.0 + 0.1 * n
            elif len(shape) in (2, 4):
                v = float(math.prod(shape[1:])) ** -0.5 * n
            else:
                raise ValueError(key)
        sd[key] = v.half().float()
    return sd


def state_sha256(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted keys: key utf-8 bytes, then the C-contiguous float32 little-endian bytes."""
    h = hashlib.sha256()
    for key in sorted(sd):
        h.update(key.encode("utf-8"))
        h.update(sd[key].detach().float().contiguous().cpu().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def build_clip(vision_layers: int, text_layers: int, image_size: int = 64) -> torch.nn.Module:
    """The open_clip CLIP of the README (random init; ``golden_clip`` loads the wgen weights)."""
    import open_clip

    return open_clip.model.CLIP(
        embed_dim=512,
        vision_cfg=dict(image_size=image_size, layers=vision_layers, width=768, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=text_layers),
        quick_gelu=True,
    )


@functools.lru_cache(maxsize=4)
def _golden_clip_and_sd(vision_layers: int, text_layers: int, image_size: int, base_seed: int):
    torch.manual_seed(0)  # only the throw-away default init draws from it
    model = build_clip(vision_layers, text_layers, image_size)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = wgen(shapes, base_seed)
    model.load_state_dict(sd, strict=True)
    model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, sd


def golden_weights(vision_layers: int, text_layers: int, image_size: int = 64, base_seed: int = 0):
    """The generated state dict (cached; do not modify)."""
    return _golden_clip_and_sd(vision_layers, text_layers, image_size, base_seed)[1]


def golden_clip(vision_layers: int, text_layers: int, image_size: int = 64, base_seed: int = 0):
    """The open_clip CLIP with wgen weights, frozen, fp32, eval (cached and shared: do not modify)."""
    return _golden_clip_and_sd(vision_layers, text_layers, image_size, base_seed)[0]


def golden_backbone(case: Case):
    """A fresh cpbench ``Backbone`` (fp32) around the case's cached golden CLIP."""
    from cpbench.models.backbone import OPENAI_MEAN, OPENAI_STD, Backbone, BackboneSpec, Preprocess

    w = case.weights
    clip = golden_clip(w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"])
    return Backbone(clip, 77, Preprocess(w["image_size"], OPENAI_MEAN, OPENAI_STD),
                    BackboneSpec(name="golden-wgen", pretrained="none"))


# ----------------------------------------------------------------------------- inputs
def golden_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images [N,3,S,S] fed as-is, one per label (N=2 in the shipped cases), labels, class names as
    given; methods clean ``_``)."""
    inp = case["inputs"]
    size = case.weights["image_size"]
    n = len(inp["labels"])
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(inp["image_seed"]))
    labels = torch.tensor(inp["labels"], dtype=torch.long)
    return images, labels, list(inp["classnames"])


def learnable_values(case: Case) -> dict[str, torch.Tensor]:
    """{official name: 0.02 * randn(shape, Generator().manual_seed(seed_base + i))} in official order
    (``inputs.learnable_seed_base``: 123 in the shipped cases)."""
    base = case["inputs"]["learnable_seed_base"]
    out = {}
    for i, t in enumerate(case.trainable):
        assert t["seed_index"] == i and t["seed"] == base + i, t
        out[t["name"]] = 0.02 * torch.randn(tuple(t["shape"]), generator=torch.Generator().manual_seed(base + i))
    return out


def golden_eps(case: Case) -> torch.Tensor:
    """BPL only: the recorded forward noise eps [L, 1, 512] (= torch.randn((L,1,512)) right after
    the case's forward seed); inject it if a method draws its noise differently."""
    b = case["bpl"]
    return torch.tensor(b["eps_full_flat"], dtype=torch.float32).view(*b["eps_stats"]["shape"])


# ----------------------------------------------------------------------------- name maps
def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Slot:
    """Where an official tensor lives in cpbench: ``param[index]`` (index None: the whole
    parameter), after ``to_cpbench`` (official -> cpbench layout); ``to_official`` maps the
    cpbench gradient slice back to the official layout."""

    name: str
    index: Any = None
    to_cpbench: Callable[[torch.Tensor], torch.Tensor] = _identity
    to_official: Callable[[torch.Tensor], torch.Tensor] = _identity


def _slot(v) -> Slot | None:
    if v is None or isinstance(v, Slot):
        return v
    return Slot(v)


def _param(method: torch.nn.Module, name: str) -> torch.nn.Parameter:
    params = dict(method.named_parameters())
    if name not in params:
        trainable = sorted(n for n, p in params.items() if p.requires_grad)
        raise KeyError(f"{type(method).__name__} has no parameter {name!r}; trainable: {trainable}")
    return params[name]


def _view(t: torch.Tensor, index):
    return t if index is None else t[index]


def set_learnables(method: torch.nn.Module, case: Case, name_map: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Copy the seeded official learnable values into ``method``; returns them by official name.

    Fails when an official trainable has no entry in ``name_map``, when a shape does not fit, or
    when a trainable cpbench parameter is not reached by the map."""
    values = learnable_values(case)
    missing = [n for n in values if n not in name_map]
    if missing:
        raise KeyError(f"name_map lacks official parameters {missing}")
    reached = set()
    with torch.no_grad():
        for off, v in values.items():
            slot = _slot(name_map[off])
            if slot is None:
                continue
            p = _param(method, slot.name)
            dst = _view(p.data, slot.index)
            src = slot.to_cpbench(v).to(dst.dtype)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{off} {tuple(v.shape)} -> {slot.name}[{slot.index}] {tuple(dst.shape)}: shapes differ")
            dst.copy_(src)
            reached.add(slot.name)
    left = sorted(n for n, p in method.named_parameters() if p.requires_grad and n not in reached)
    if left:
        raise ValueError(f"trainable cpbench parameters not set from the golden case: {left}")
    return values


# ----------------------------------------------------------------------------- running
def forward_seed(case: Case) -> int:
    """The global seed the official run set right before each forward (``inputs``)."""
    return int(case["inputs"]["rng_seed_before_each_forward"])


def eval_logits(method: torch.nn.Module, images: torch.Tensor, case: Case) -> torch.Tensor:
    """``method.eval()``, ``torch.manual_seed(forward seed)``, ``method(images)`` under no_grad."""
    method.eval()
    torch.manual_seed(forward_seed(case))
    with torch.no_grad():
        return method(images).detach().float()


def train_step(method: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, case: Case) -> dict[str, torch.Tensor]:
    """``method.train()``, clear grads, the case's forward seed, ``forward_train``, then the
    method's own ``backward`` hook, as the engine calls it (the sum of the terms unless the method
    says otherwise: ProGrad projects). Returns the weighted terms (detached)."""
    method.train()
    for p in method.parameters():
        p.grad = None
    torch.manual_seed(forward_seed(case))
    _, terms = method.forward_train(images, labels)
    terms_ = {k: t.sum() for k, t in terms.items()}
    if hasattr(method, "backward"):   # a cpbench Method (a bare encoder harness has none: the plain sum)
        method.backward(terms_, _identity)
    else:
        sum(terms_.values()).backward()
    return {k: v.detach().float() for k, v in terms.items()}


# ----------------------------------------------------------------------------- comparing
def _short(name: str) -> str:
    return name.split(" ")[0]


def official_losses(case: Case) -> dict[str, float]:
    """Official unweighted loss calls by short name (text before the first space), in call order."""
    out = {}
    for c in case["train"]["loss_calls"]:
        key = _short(c["name"])
        assert key not in out, key
        out[key] = float(c["value"])
    return out


def compare_logits(logits: torch.Tensor, case: Case, key: str = "logits") -> dict[str, float]:
    """{"logits": max |Δ|} against ``eval[key]`` (``logits`` = pure fp32; ``logits_eval_officialhalf``)."""
    ref = torch.tensor(case["eval"][key], dtype=torch.float64)
    got = logits.detach().double()
    assert got.shape == ref.shape, (tuple(got.shape), tuple(ref.shape))
    return {"logits": float((got - ref).abs().max())}


def compare_losses(terms: Mapping[str, torch.Tensor], expected: Mapping[str, float], case: Case) -> dict[str, float]:
    """Relative |Δ| per cpbench term against ``expected`` (built from ``official_losses``) and of
    the sum of all terms against the official ``total_reported`` (where the official step has one).
    Every term must be expected."""
    assert set(terms) == set(expected), (sorted(terms), sorted(expected))
    out = {}
    for k, v in expected.items():
        got = float(terms[k].sum())
        out[f"loss:{k}"] = abs(got - v) / max(abs(v), 1e-12)
    if case["train"]["total_reported"] is not None:  # None: the official step has no scalar total (ProGrad)
        total = float(sum(float(t.sum()) for t in terms.values()))
        ref = float(case["train"]["total_reported"])
        out["loss:total"] = abs(total - ref) / max(abs(ref), 1e-12)
    return out


def official_grad(case: Case, name: str) -> dict | None:
    return case["grads"][name]


def grad_of(method: torch.nn.Module, slot: Slot) -> torch.Tensor | None:
    p = _param(method, slot.name)
    if p.grad is None:
        return None
    return slot.to_official(_view(p.grad, slot.index)).detach()


def compare_grads(method: torch.nn.Module, case: Case, name_map: Mapping[str, Any]) -> dict[str, float]:
    """Relative gradient gaps after ``train_step``, per official parameter: ``grad:<name>:l2``,
    ``:sum`` (|Δsum| / (l2·sqrt(numel))), ``:first`` (max |Δ| of the first 32 / max |g|).
    An official ``null`` gradient must be None or all zero here (value ``grad:<name>:null``)."""
    out = {}
    for off in (t["name"] for t in case.trainable):
        ref = official_grad(case, off)
        slot = _slot(name_map[off])
        g = None if slot is None else grad_of(method, slot)
        if ref is None:
            out[f"grad:{off}:null"] = 0.0 if g is None else float(g.abs().max())
            continue
        if g is None:
            out[f"grad:{off}:l2"] = math.inf
            continue
        assert list(g.shape) == list(ref["shape"]), (off, tuple(g.shape), ref["shape"])
        g64 = g.double()
        l2 = float(g64.norm())
        out[f"grad:{off}:l2"] = abs(l2 - ref["l2"]) / max(ref["l2"], 1e-30)
        out[f"grad:{off}:sum"] = abs(float(g64.sum()) - ref["sum"]) / max(ref["l2"] * math.sqrt(g.numel()), 1e-30)
        first = torch.tensor(ref["first"], dtype=torch.float64)
        scale = max(float(g64.abs().max()), 1e-30)
        out[f"grad:{off}:first"] = float((g64.flatten()[: len(first)] - first).abs().max()) / scale
    return out


def assert_close(report: Mapping[str, float], tol: float, what: str = "") -> None:
    """Assert every figure in ``report`` is <= ``tol`` (and finite); the message lists them all.
    With ``CPBENCH_GOLDEN_LOG=path`` set, each report is also appended there as a JSON line
    (test id, what, tol, figures) to tabulate max |Δ| per method."""
    log = os.environ.get("CPBENCH_GOLDEN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "what": what, "tol": tol,
                                "report": dict(report)}) + "\n")
    bad = {k: v for k, v in report.items() if not (v <= tol)}
    if bad:
        lines = "\n".join(f"  {k}: {v:.3g}" + ("   <-- over" if k in bad else "") for k, v in report.items())
        raise AssertionError(f"{what} over tolerance {tol:g}:\n{lines}")


def worst(report: Mapping[str, float]) -> float:
    return max(report.values()) if report else 0.0


def constructor_init_gaps(method: torch.nn.Module, case: Case, name_map: Mapping[str, Any]) -> dict[str, float]:
    """Call BEFORE ``set_learnables``: max abs gap of the method's own init vs the official
    ``constructor_init`` (sum, l2, first 8) for each recorded parameter."""
    out = {}
    for off, rec in case["constructor_init"].items():
        slot = _slot(name_map[off])
        t = slot.to_official(_view(_param(method, slot.name).detach(), slot.index)).double()
        assert list(t.shape) == list(rec["shape"]), (off, tuple(t.shape), rec["shape"])
        first = torch.tensor(rec["first"], dtype=torch.float64)
        out[f"init:{off}"] = max(abs(float(t.sum()) - rec["sum"]), abs(float(t.norm()) - rec["l2"]),
                                 float((t.flatten()[: len(first)] - first).abs().max()))
    return out


def full_report(method: torch.nn.Module, case: Case, name_map: Mapping[str, Any],
                expected_losses: Callable[[dict[str, float]], dict[str, float]],
                logits_key: str = "logits") -> dict[str, float]:
    """Everything at once (for diagnosing; print it): sets the learnables, runs eval and one
    training step, returns logits, loss and gradient gaps. ``expected_losses(L)`` maps the
    official short-named unweighted losses to the method's expected weighted terms."""
    images, labels, _ = golden_inputs(case)
    set_learnables(method, case, name_map)
    rep = compare_logits(eval_logits(method, images, case), case, logits_key)
    terms = train_step(method, images, labels, case)
    rep.update(compare_losses(terms, expected_losses(official_losses(case)), case))
    rep.update(compare_grads(method, case, name_map))
    return rep
