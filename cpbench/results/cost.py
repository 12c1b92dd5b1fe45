"""``cpbench report --cost``: what each entry cost, per protocol, from the results rows.

One row per entry, training dataset, device and precision, so that jobs of different sizes
(ImageNet and EuroSAT) or on different hardware are never averaged together. A job is one training
and its evaluations (one ``run_id``); its rows repeat the training time and the peak memory.
Columns: jobs; learnable parameters (``n_learnable``); training seconds per job (mean ± std over
the jobs; time loaded from a finished checkpoint counts as it was measured then); evaluation
seconds per 1,000 test images (each evaluation's ``eval_seconds / n_test``, mean ± std, so the
targets of a transfer training, of different sizes, can share a row); peak memory per job (MiB, the
largest: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set on a CPU,
see ``cpbench/engine/memory.py``). The device is the model the rows recorded (``device_name``:
the GPU's ``torch.cuda.get_device_name``, or the CPU's); rows from before cpbench recorded it say
``unknown`` with the device kind. Precision: effective, and what was asked for when it differs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpbench.engine.memory import RSS
from cpbench.results.layouts import PROTOCOL_ORDER, PROTOCOL_TITLES, order_datasets
from cpbench.results.table import Cell, Entry, Row, Table

COLUMNS = ["jobs", "learnable params", "train s / job", "eval s / 1k images", "peak memory MiB"]


def _device(g: pd.DataFrame) -> pd.Series:
    kind = g["device"].fillna("").astype(str).str.split(":").str[0] if "device" in g.columns else \
        pd.Series("", index=g.index)
    name = g["device_name"].fillna("").astype(str) if "device_name" in g.columns else pd.Series("", index=g.index)
    return name.where(name != "", "unknown (" + kind.where(kind != "", "?") + ")")


def _precision(g: pd.DataFrame) -> str:
    eff = g["precision"].fillna("").astype(str) if "precision" in g.columns else pd.Series([""] * len(g))
    req = g["precision_requested"].fillna("").astype(str) if "precision_requested" in g.columns else eff
    pairs = sorted({(e, r) for e, r in zip(eff, req) if e})
    return ", ".join(e + (f" (asked {r})" if r and r != e else "") for e, r in pairs) or "?"


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(g[name], errors="coerce") if name in g.columns else pd.Series(np.nan, index=g.index)


def _cells(e: Entry, g: pd.DataFrame, dataset: str) -> list[Cell]:
    train = _col(g, "train_seconds").groupby(g["_job"], sort=False).first()
    per_k = _col(g, "eval_seconds") / _col(g, "n_test") * 1000.0
    peak = _col(g, "peak_memory_mb").groupby(g["_job"]).max()
    cells = [Cell(float(len(train)), digits=0, entry=e, field="jobs"),
             Cell(float(_col(g, "n_learnable").max()), digits=0, entry=e, field="learnable params"),
             Cell(float(train.mean()), float(train.std(ddof=0)), n=int(train.notna().sum()), entry=e,
                  field="train s / job"),
             Cell(float(per_k.mean()), float(per_k.std(ddof=0)), n=int(per_k.notna().sum()), entry=e,
                  field="eval s / 1k images"),
             Cell(float(peak.max()), digits=0, entry=e, field="peak memory MiB")]
    for c in cells:
        c.dataset = dataset
    return cells


def tables(df: pd.DataFrame, entries: dict[str, Entry]) -> list[Table]:
    out = []
    order = {k: i for i, k in enumerate(entries)}
    job = df["run_id"].astype(str) + "|" + df["job_key"].astype(str) if "job_key" in df.columns else df["run_id"]
    df = df.assign(_job=job, _device=_device(df))
    for protocol in [p for p in PROTOCOL_ORDER if p in set(df["protocol"])]:
        part = df[df["protocol"] == protocol]
        rows, sources = [], set()
        for key in sorted(part["entry"].unique(), key=lambda k: order.get(k, len(order))):
            e = entries[key]
            mine = part[part["entry"] == key]
            for dataset in order_datasets(mine["train_dataset"]):
                for device, g in mine[mine["train_dataset"] == dataset].groupby("_device", sort=True):
                    if "peak_memory_source" in g.columns:
                        sources.update(s for s in g["peak_memory_source"].dropna().astype(str) if s)
                    rows.append(Row((e.label, dataset, device, _precision(g)), _cells(e, g, dataset)))
        notes = ["One row per method, training dataset, device and precision (jobs of different sizes or hardware "
                 "are not averaged). Mean ± std over jobs (train) and evaluations (eval, per 1,000 test images); a "
                 "job = one training and its evaluations. Device: the GPU model (torch.cuda.get_device_name) or the "
                 "CPU's; unknown = rows from before cpbench recorded it."]
        notes.append("Peak memory: " + ("the process's peak resident set on the CPU (one process running several "
                                         "jobs reports the largest so far: an upper bound); " if RSS in sources else "")
                     + "torch.cuda.max_memory_allocated per job on a GPU; – = rows from before cpbench recorded it "
                     "(or, for the other columns, did not record the time or test size).")
        out.append(Table(protocol, f"Cost: {PROTOCOL_TITLES[protocol].lower()}",
                         ["Method", "Trained on", "Device", "Precision"], list(COLUMNS), rows, notes=notes,
                         key=protocol, kind="cost"))
    return out
