"""``cpbench run --tensorboard DIR``: each training as a TensorBoard run ``DIR/<training_key>``.

Per epoch (step = the 1-based epoch, as ``history.parquet``): ``train/loss`` (the summed loss),
``train/loss_<term>`` for each loss term, ``train/lr``, ``train/acc`` (percent, from the training
logits) and ``train/epoch_seconds``, written as the epochs finish (event files ``*.history``).
After each job, its final accuracies (step = the epochs trained): ``<protocol>/<eval dataset>/
<subset>`` (retrieval: ``…/R@<k>``; continual: ``…/after_task<t>``), in percent like the rows
(event files ``*.final-<job_key>``, rewritten when the job's rows are).

A training that starts again from its first epoch (``--force``) replaces the run's events; one
that resumes adds the epochs it trains; a job whose training finished before (or whose rows
exist) fills in its history from ``history.parquet`` when the run has none yet, so every run
holds exactly the scalars of its ``history.parquet``. Needs the ``tensorboard`` package
(``pip install tensorboard``, or the ``tensorboard`` extra); torch's ``SummaryWriter`` writes the
files.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from cpbench.errors import UserError

HISTORY = ".history"
FINAL = ".final-"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check(path: Path) -> None:
    """``--tensorboard DIR`` can be honoured: the package is there and DIR is a folder (checked
    before anything loads)."""
    if not available():
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or cpbench[tensorboard]), or drop --tensorboard")
    from cpbench.paths import check_folder

    check_folder(path, "--tensorboard")


def _writer(run_dir: Path, suffix: str):
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(run_dir), filename_suffix=suffix)


def _purge(run_dir: Path, pattern: str) -> None:
    for f in run_dir.glob(f"events.out.tfevents.*{pattern}") if run_dir.is_dir() else []:
        f.unlink(missing_ok=True)


def epoch_scalars(row: dict) -> dict[str, float]:
    """The scalars of one ``history.parquet`` row (NaN train accuracy, a method without one: left out)."""
    out = {"train/loss": row["loss"], "train/lr": row["lr"], "train/acc": row.get("train_acc"),
           "train/epoch_seconds": row.get("seconds")}
    out.update({f"train/{k}": v for k, v in row.items() if k.startswith("loss_")})
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


class EpochWriter:
    """Writes each finished epoch of one training to its run (opened at the first epoch)."""

    def __init__(self, root: Path, training_key: str):
        self.run_dir, self.writer = Path(root) / training_key, None

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            if int(row["epoch"]) == 1:  # trained from the start: an earlier training's events go
                _purge(self.run_dir, HISTORY)
            self.writer = _writer(self.run_dir, HISTORY)
        for tag, value in epoch_scalars(row).items():
            self.writer.add_scalar(tag, value, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _int(value) -> int:
    """A row's integer column: 0 for null (None, or NaN once a stored row went through pandas)."""
    return 0 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def final_tag(row: dict) -> str:
    tag = f"{row['protocol']}/{row['eval_dataset']}/{row['subset']}"
    if _int(row.get("recall_at")):
        tag += f"/R@{_int(row['recall_at'])}"
    if _int(row.get("task")) and _int(row.get("n_tasks")):
        tag += f"/after_task{_int(row['task'])}"
    return tag


def write_final(root: Path, training_key: str, job_key: str, history_path: Path, rows: list[dict]) -> None:
    """A job's final accuracies into its training's run; the history from ``history_path`` first
    when the run has none yet (trained before, or without --tensorboard)."""
    run_dir = Path(root) / training_key
    if not list(run_dir.glob(f"events.out.tfevents.*{HISTORY}")) and Path(history_path).is_file():
        import pandas as pd

        w = _writer(run_dir, HISTORY)
        for row in pd.read_parquet(history_path).to_dict("records"):
            for tag, value in epoch_scalars(row).items():
                w.add_scalar(tag, value, int(row["epoch"]))
        w.close()
    _purge(run_dir, FINAL + job_key)
    w = _writer(run_dir, FINAL + job_key)
    for row in rows:
        step = _int(row.get("epochs"))
        w.add_scalar(final_tag(row), float(row["accuracy"]), step)
    w.close()
