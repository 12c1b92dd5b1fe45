"""Finding the official checkpoint file of a job under a folder (the rules are in
``cpbench/state/official.py``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cpbench.errors import UserError
from cpbench.state.official_names import format_of

CHECKPOINT = re.compile(r"model\.pth\.tar-(\d+)$")
BEST = "model-best.pth.tar"
SUBSET_DIRS = {"base", "train_base"}
OTHER_SUBSET_DIRS = {"novel", "new", "test_new", "test_base"}


def root_folder(path: str) -> Path:
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
    fmt = format_of(method)
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
