"""The authors' released checkpoints, evaluated through cpbench (``state_from = "official:DIR"``,
``cpbench run METHOD --from-official DIR``; the import path itself is ``cpbench/state/imports.py``).
This module is the ``official:`` backend (identity, check, load_state) and reads the files;
``official_files.py`` finds a job's file under ``DIR`` and ``official_names.py`` holds each
method's format and the name mapping.

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

Loading never unpickles code: ``torch.load(weights_only=True)`` through ``state/unpickle.py``. The
official files also hold the optimizer and the LR scheduler; Dassl's scheduler state pickles its successor
``torch.optim.lr_scheduler.CosineAnnealingLR`` object, which holds the ``torch.optim.SGD`` object
(with a ``collections.defaultdict`` state), and ``weights_only`` refuses those globals. They are
substituted by inert stand-ins that run no code and drop their state (they are never used); a file
naming any other global outside ``weights_only``'s allow-list is refused with its name.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from pathlib import Path

import torch

from cpbench.errors import UserError
from cpbench.state import unpickle
from cpbench.state.official_files import checkpoint_files, find_checkpoint, root_folder
from cpbench.state.official_names import file_names, few, format_of, map_state

# Dassl's trainer objects inside the file (optimizer, LR scheduler) become inert stand-ins
TRAINER_OBJECTS = {"torch.optim.*": unpickle.Inert, "dassl.*": unpickle.Inert,
                   "collections.defaultdict": unpickle.empty_dict, "builtins.dict": dict}


# ----------------------------------------------------------------------------- reading files
def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official file, loaded with ``weights_only=True`` (``module.``
    prefixes of DataParallel runs removed, as ``save_checkpoint``)."""
    try:
        obj = unpickle.torch_load(path, TRAINER_OBJECTS, str(path), "an official checkpoint holds tensors, "
                                  "numbers, an optimizer and a scheduler", mmap=mmap)
    except UserError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[-1][:200]
        raise UserError(f"{path}: not a readable official checkpoint ({first})") from None
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: not an official checkpoint (no state_dict of tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


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
    root = root_folder(path)
    files = checkpoint_files(root)
    if not files:
        raise UserError(f"--from-official {path}: no official checkpoints (model.pth.tar-<epoch>) in that folder")
    stamps = tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _identity(root, stamps)


def config(path: str) -> None:  # noqa: ARG001 - imports.config's signature
    """The authors' files record no cpbench settings: the method's options must be the checkpoint's
    (``--set``), its YAML defaults apply otherwise."""
    return None


def check(path: str, req, jobs, data_root) -> None:  # noqa: ARG001 - imports.check's signature
    """Before any backbone is loaded: the folder exists, every job finds exactly one file, and
    each file reads (without unpickling code) and holds its method's anchor names."""
    root = root_folder(path)
    for job in jobs:
        fmt = format_of(job.method)
        f = find_checkpoint(root, job.method, job.train_dataset, job.seed, job.shots, job.train_subset)
        names = file_names(fmt, read_state_dict(f, mmap=True))
        lacking = [a for a in fmt.anchors if a not in names]
        if lacking:
            raise UserError(f"{f} does not fit {job.method}: missing {few(lacking)}; import it as the method that wrote it")


def load_state(path: str, job, method, dataset) -> dict[str, torch.Tensor]:
    """The learned state of ``method`` (built on the job's training classes) from the job's
    official file."""
    root = root_folder(path)
    f = find_checkpoint(root, job.method, job.train_dataset, job.seed, job.shots, job.train_subset)
    fmt = format_of(job.method)
    return map_state(f, job.method, method, file_names(fmt, read_state_dict(f)))
