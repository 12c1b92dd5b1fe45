"""The authors' released checkpoints, evaluated through cpbench (``state_from = "official:DIR"``,
``cpbench run METHOD --from-official DIR``; the import path itself is ``cpbench/imports.py``).

The official format (Dassl c61a1b5 ``SimpleTrainer.save_model`` / ``torchtools.save_checkpoint``,
read by each repository's ``load_model``):

- one file per registered model: ``<output dir>/<model name>/model.pth.tar-<epoch>`` (and a
  ``checkpoint`` text file naming the last one), holding a torch-pickled dict ``{"state_dict",
  "epoch", "optimizer", "scheduler", "val_result"}``;
- the model name is what the trainer registers: ``prompt_learner`` (CoOp, CoCoOp, KgCoOp, PRE,
  LAMM's CoOp trainer, Bayesian PL, CPL, ProGrad: the prompt learner alone, keys without a prefix),
  ``clip_adapter`` (CLIP-Adapter: its ``CustomCLIP.adapter`` alone, ``fc.0.weight`` / ``fc.2.weight``),
  ``MultiModalPromptLearner`` (MaPLe and LAMM's MaPLe trainer) and ``VLPromptLearner`` (IVLP,
  PromptSRC): the WHOLE model, frozen CLIP included, keys as ``named_parameters`` of the
  official ``CustomCLIP`` (``prompt_learner.ctx``, ``image_encoder.VPT``,
  ``text_encoder.transformer.resblocks.3.VPT_shallow`` …);
- ``load_model`` deletes ``token_prefix`` / ``token_suffix`` (rebuilt from the current class
  names) and loads the rest with ``strict=False``; LAMM's MaPLe trainer also deletes
  ``token_classes`` (its eval-only runs then use the initial label embeddings; here the learned
  ones are imported);
- folders: the training scripts write ``output/base2new/train_base/<dataset>/shots_16/<Trainer>/
  <cfg>/seed<k>/`` (cross-dataset: ``output/imagenet/<Trainer>/<cfg>_16shots/seed<k>/``); the
  released MaPLe / IVLP / PromptSRC zips unpack to ``<dataset>/base/seed<k>/`` (base-to-new) and
  ``imagenet/seed<k>/`` (cross-dataset, DG), and the ``reproduce_*.sh`` scripts load the last epoch
  (``--load-epoch``).

``DIR`` may be any folder above the files: the file of a job is the one under ``DIR`` whose path
has ``seed<k>/<model name>/`` at its end and the training dataset's name as a component; a
``shots_<n>`` / ``<n>shots`` component, where present, must equal the job's shots; base-to-new jobs
prefer a path with a ``base`` / ``train_base`` component, all-class jobs one without; in the folder
the highest ``model.pth.tar-<epoch>`` (else ``model-best.pth.tar``) is taken. Anything left
ambiguous is refused with the candidates named.

Mapping. Every learned tensor of the cpbench method has one official name (the golden cases
record every learnable under it): ``prompt_learner.<cpbench key>`` for the prompt-learner methods
and MaPLe; for IVLP / PromptSRC ``ctx`` -> ``prompt_learner.ctx``, ``VPT`` ->
``image_encoder.VPT``, ``deep_text[i]`` / ``deep_vision[i]`` -> ``{text,image}_encoder.transformer.
resblocks.{i+1}.VPT_shallow``. A file that lacks a name, holds a learnable-looking name cpbench
does not map, or a tensor of another shape is refused with one line naming the keys. Ignored:
what the official ``load_model`` deletes, the frozen CLIP of whole-model files (cpbench's backbone
is the pretrained CLIP given with ``--backbone``; PromptSRC's files hold its GPA-summed fp16 copy,
which differs by some ulps, see ``methods/promptsrc.py``), PromptSRC's frozen zero-shot encoder
``prompt_learner.ZS_image_encoder.*``, KgCoOp's unused frozen ``bias_vectors`` / ``meta_net``,
and MaPLe's deep prompts for layers the backbone does not have (the official forward never uses
them). cpbench-only bookkeeping (PromptSRC's GPA accumulators) keeps the method's own values.

No format for Tip-Adapter(-F) or CLIP-LoRA: their authors released no checkpoints, and their code
writes no Dassl files (Tip-Adapter's cache files lack the searched β/α, which are printed, not
saved; CLIP-LoRA's ``save_lora`` writes its own nested dict); ``--from-official`` refuses them in
one line. ProGrad's and CLIP-Adapter's code writes the Dassl files above (no released ones either).

Loading never unpickles code: ``torch.load(weights_only=True)``. The official files also hold the
optimizer and the LR scheduler; Dassl's scheduler state pickles its successor
``torch.optim.lr_scheduler.CosineAnnealingLR`` object, which holds the ``torch.optim.SGD`` object
(with a ``collections.defaultdict`` state), and ``weights_only`` refuses those globals. They are
substituted by inert stand-ins that run no code and drop their state (they are never used); a file
naming any other global outside ``weights_only``'s allow-list is refused with its name.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import zipfile
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

CHECKPOINT = re.compile(r"model\.pth\.tar-(\d+)$")
BEST = "model-best.pth.tar"
SUBSET_DIRS = {"base", "train_base"}
OTHER_SUBSET_DIRS = {"novel", "new", "test_new", "test_base"}


def _format(method: str) -> Format:
    if method not in FORMATS:
        raise UserError(f"--from-official: {method} has no official checkpoint format to import; "
                        f"methods with one: {', '.join(sorted(FORMATS))}")
    return FORMATS[method]


# ----------------------------------------------------------------------------- finding files
def _root(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"--from-official {path}: no such folder; pass the folder of the authors' checkpoints")
    return root.resolve()


def checkpoint_files(root: Path) -> tuple[Path, ...]:
    """Every official checkpoint file under ``root``, in a stable order."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out.extend(Path(d) / f for f in sorted(files) if CHECKPOINT.match(f) or f == BEST)
    return tuple(out)


def _pick_epoch(files: list[Path]) -> Path:
    numbered = [(int(CHECKPOINT.match(f.name).group(1)), f) for f in files if CHECKPOINT.match(f.name)]
    if numbered:
        return max(numbered)[1]
    return files[0]


def find_checkpoint(root: Path, method: str, dataset: str, seed: int, shots: int, subset: str) -> Path:
    """The official file of one job under ``root`` (see the module docstring for the rules)."""
    fmt = _format(method)
    folders: dict[Path, list[Path]] = {}
    for f in checkpoint_files(root):
        if f.parent.name == fmt.module and f.parent.parent.name == f"seed{seed}":
            folders.setdefault(f.parent, []).append(f)
    cands = [d for d in folders if dataset in d.parts]

    def shots_ok(d: Path) -> bool:
        for part in d.relative_to(root).parts:
            m = re.fullmatch(r"shots_(\d+)", part) or re.search(r"(?:^|_)(\d+)shots$", part)
            if m and int(m.group(1)) != shots:
                return False
        return True

    cands = [d for d in cands if shots_ok(d)]
    # base-to-new trains on the base classes (released zips: <dataset>/base/, scripts: train_base/);
    # cross-dataset, DG and few-shot on all classes (no such component)
    if subset == "base":
        cands = [d for d in cands if set(d.parts) & SUBSET_DIRS]
        layout = f".../{dataset}/base/seed{seed}/{fmt.module}/model.pth.tar-<epoch>"
    else:
        cands = [d for d in cands if not set(d.relative_to(root).parts) & (SUBSET_DIRS | OTHER_SUBSET_DIRS)]
        layout = f".../{dataset}/seed{seed}/{fmt.module}/model.pth.tar-<epoch>, not under base/"
    where = f"{dataset} ({subset} classes, {shots} shots) seed {seed}"
    if not cands:
        raise UserError(f"--from-official {root}: no official {method} checkpoint for {where}; expected {layout}")
    if len(cands) > 1:
        shown = ", ".join(str(d.relative_to(root)) for d in cands[:3])
        raise UserError(f"--from-official {root}: {len(cands)} checkpoints fit {where} ({shown}); "
                        "pass the folder of one of them")
    return _pick_epoch(folders[cands[0]])


# ----------------------------------------------------------------------------- reading files
class _Inert:
    """Stand-in for the trainer's optimizer / LR-scheduler objects inside an official file: built
    without running any of their code; their state is dropped."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _empty_dict(*args):
    return {}


def _stand_ins(path: Path) -> list:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip archive (legacy format): weights_only decides alone
        return []
    out, refused = [], []
    for name in names:
        if name.startswith("torch.optim.") or name.startswith("dassl."):
            out.append((_Inert, name))
        elif name == "collections.defaultdict":
            out.append((_empty_dict, name))
        elif name == "builtins.dict":
            out.append(dict)
        else:
            refused.append(name)
    if refused:
        raise UserError(f"{path}: holds {', '.join(refused[:3])}, which cpbench does not load (it never "
                        "unpickles code); an official checkpoint holds tensors, numbers, an optimizer and a scheduler")
    return out


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official file, loaded with ``weights_only=True`` (``module.``
    prefixes of DataParallel runs removed, as ``save_checkpoint``)."""
    try:
        with torch.serialization.safe_globals(_stand_ins(path)):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UserError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[-1][:200]
        raise UserError(f"{path}: not a readable official checkpoint ({first})") from None
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: not an official checkpoint (no state_dict of tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def _official(fmt: Format, key: str) -> str:
    return key if fmt.whole_model else fmt.file_prefix + key


def file_names(fmt: Format, sd: dict) -> dict[str, torch.Tensor]:
    """The file's tensors by official name (``prompt_learner.`` added for prompt-learner files)."""
    return {_official(fmt, k): v for k, v in sd.items()}


# ----------------------------------------------------------------------------- mapping
@dataclass
class _Slot:
    key: str                  # cpbench learned_state key
    index: int | None = None  # slice of a stacked tensor (deep prompts)


def official_names(method_name: str, state: dict[str, torch.Tensor]) -> dict[str, _Slot]:
    """Official name of every learned tensor of a cpbench method (its ``learned_state``)."""
    fmt = _format(method_name)
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
    fmt = _format(method_name)
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
            parts.append("missing " + _few(missing))
        if unexpected:
            parts.append("unexpected " + _few(unexpected))
        parts.extend(shapes[:3])
        raise UserError(f"{path} does not fit {method_name}: {'; '.join(parts)}; set the method options to the "
                        "checkpoint's config (--set method.<option>=…) or import it as the method that wrote it")
    return out


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# ----------------------------------------------------------------------------- the backend API
def _file_fingerprint(path: Path) -> bytes:
    """Content digest: the zip directory's per-record CRC-32 and sizes (a torch file is a zip
    archive; cheap for any size), else the sha256 of the bytes."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename.split('/', 1)[-1]}:{info.CRC}:{info.file_size};".encode())
    except zipfile.BadZipFile:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.digest()


@functools.lru_cache(maxsize=64)
def _identity(root: Path, stamps: tuple) -> str:
    h = hashlib.sha256()
    for rel, _, _ in stamps:
        h.update(rel.encode() + b"\0" + _file_fingerprint(root / rel))
    return h.hexdigest()[:16]


def identity(path: str) -> str:
    """A content hash of every official checkpoint under the folder (relative paths and contents,
    not the absolute path), so the same files give the same keys on any machine."""
    root = _root(path)
    files = checkpoint_files(root)
    if not files:
        raise UserError(f"--from-official {path}: no official checkpoints (model.pth.tar-<epoch>) in that folder")
    stamps = tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _identity(root, stamps)


def check(path: str, req, jobs, data_root) -> None:  # noqa: ARG001 - imports.check's signature
    """Before any backbone is loaded: the folder exists, every job finds exactly one file, and
    each file reads (without unpickling code) and holds its method's anchor names."""
    root = _root(path)
    for job in jobs:
        fmt = _format(job.method)
        f = find_checkpoint(root, job.method, job.train_dataset, job.seed, job.shots, job.train_subset)
        names = file_names(fmt, read_state_dict(f, mmap=True))
        lacking = [a for a in fmt.anchors if a not in names]
        if lacking:
            raise UserError(f"{f} does not fit {job.method}: missing {_few(lacking)}; import it as the method that wrote it")


def load_state(path: str, job, method, dataset) -> dict[str, torch.Tensor]:
    """The learned state of ``method`` (built on the job's training classes) from the job's
    official file."""
    root = _root(path)
    f = find_checkpoint(root, job.method, job.train_dataset, job.seed, job.shots, job.train_subset)
    fmt = _format(job.method)
    return map_state(f, job.method, method, file_names(fmt, read_state_dict(f)))
