"""``cpbench report --cost``: what each entry cost, per protocol, from the results rows.

A job is one training and its evaluations (one ``run_id``); its rows repeat the training time
and the peak memory. Columns: jobs; learnable parameters (``n_learnable``; the largest when it
depends on the dataset, e.g. class-specific contexts or a linear probe, with the range in the
notes); training seconds per job (mean ± std over jobs; time loaded from a finished checkpoint
counts as it was measured then); evaluation seconds per evaluation; peak memory per job (MiB,
the largest: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set on a
CPU, see ``cpbench/engine/memory.py``). Device and precision (effective, and what was asked for
when it differs) label each row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpbench.engine.memory import RSS
from cpbench.results.layouts import PROTOCOL_ORDER, PROTOCOL_TITLES
from cpbench.results.table import Cell, Entry, Row, Table

COLUMNS = ["jobs", "learnable params", "train s / job", "eval s / evaluation", "peak memory MiB"]


def _device(values) -> str:
    kinds = sorted({v.split(":")[0] for v in values if isinstance(v, str) and v})
    return ", ".join(kinds) or "?"


def _precision(g: pd.DataFrame) -> str:
    eff = g["precision"].fillna("").astype(str) if "precision" in g.columns else pd.Series([""] * len(g))
    req = g["precision_requested"].fillna("").astype(str) if "precision_requested" in g.columns else eff
    pairs = sorted({(e, r) for e, r in zip(eff, req) if e})
    return ", ".join(e + (f" (asked {r})" if r and r != e else "") for e, r in pairs) or "?"


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(g[name], errors="coerce") if name in g.columns else pd.Series(np.nan, index=g.index)


def tables(df: pd.DataFrame, entries: dict[str, Entry]) -> list[Table]:
    out = []
    order = {k: i for i, k in enumerate(entries)}
    job = df["run_id"].astype(str) + "|" + df["job_key"].astype(str) if "job_key" in df.columns else df["run_id"]
    df = df.assign(_job=job)
    for protocol in [p for p in PROTOCOL_ORDER if p in set(df["protocol"])]:
        part = df[df["protocol"] == protocol]
        rows, varies, sources = [], [], set()
        for key in sorted(part["entry"].unique(), key=lambda k: order.get(k, len(order))):
            e = entries[key]
            g = part[part["entry"] == key]
            train = _col(g, "train_seconds").groupby(g["_job"], sort=False).first()
            params = _col(g, "n_learnable")
            if params.nunique() > 1:
                varies.append(f"{e.label} {int(params.min())}–{int(params.max())}")
            evals = _col(g, "eval_seconds")
            peak = _col(g, "peak_memory_mb").groupby(g["_job"]).max()
            if "peak_memory_source" in g.columns:
                sources.update(s for s in g["peak_memory_source"].dropna().astype(str) if s)
            cells = [Cell(float(len(train)), digits=0, entry=e, field="jobs"),
                     Cell(float(params.max()), digits=0, entry=e, field="learnable params"),
                     Cell(float(train.mean()), float(train.std(ddof=0)), n=int(train.notna().sum()), entry=e,
                          field="train s / job"),
                     Cell(float(evals.mean()), float(evals.std(ddof=0)), n=int(evals.notna().sum()), entry=e,
                          field="eval s / evaluation"),
                     Cell(float(peak.max()), digits=0, entry=e, field="peak memory MiB")]
            for c in cells:
                c.dataset = protocol
            rows.append(Row((e.label, _device(g["device"]), _precision(g)), cells))
        notes = ["Mean ± std over jobs (train) and evaluations (eval); a job = one training and its evaluations."]
        if varies:
            notes.append("Learnable parameters depend on the dataset (the largest shown): " + "; ".join(varies) + ".")
        notes.append("Peak memory: " + ("the process's peak resident set on the CPU (one process running several "
                                         "jobs reports the largest so far: an upper bound); " if RSS in sources else "")
                     + "torch.cuda.max_memory_allocated per job on a GPU; – = rows from before cpbench recorded it.")
        out.append(Table(protocol, f"Cost: {PROTOCOL_TITLES[protocol].lower()}", ["Method", "Device", "Precision"],
                         list(COLUMNS), rows, notes=notes, key=protocol, kind="cost"))
    return out
