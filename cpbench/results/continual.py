"""Continual-learning tables (``--protocol continual``): per dataset, shots, task count and class
order, one row per method with the accuracy on all seen classes after each task, the final
accuracy, the average incremental accuracy and the forgetting.

Definitions. A_t: accuracy on the test images of every class seen after training task t, each
image classified among all seen classes (rows with subset ``seen``); a_{t,j}: accuracy on the
test images of task j's classes after task t (subset ``task<j>``); T tasks. The same measures
within tasks use a'_{t,j}, task j's test images classified among task j's classes only (subset
``task<j>-own``): the forgetting of a task's own decision, without the competition of later
classes.

- Average incremental accuracy = (1/T) Σ_{t=1..T} A_t: the mean of the accuracies after every
  training step, first included (Rebuffi, Kolesnikov, Sperl, Lampert, "iCaRL: Incremental
  Classifier and Representation Learning", CVPR 2017, section 4).
- Final accuracy = A_T.
- Forgetting = (1/(T-1)) Σ_{j<T} f_j with f_j = max_{l in j..T-1} a_{l,j} - a_{T,j}: how far each
  earlier task fell below the best accuracy it ever had (Chaudhry, Dokania, Ajanthan, Torr,
  "Riemannian Walk for Incremental Learning: Understanding Forgetting and Intransigence",
  ECCV 2018, section 4.1, the forgetting measure F_k at k = T).

All three are computed from the seed means of A_t and a_{t,j}. Average incremental and final
accuracy are linear in them, so they equal the mean of the per-seed values; so is the forgetting
for T = 2 (f_1 = a_{1,1} - a_{2,1}). For T > 2 it is the forgetting of the mean accuracies, at most
the mean of the per-seed forgetting (the max is taken after averaging).
"""

from __future__ import annotations

import json

import pandas as pd

from cpbench.results.report import Cell, Table, _cell, _flag, _nan, _notes


def average_incremental(seen: list[float]) -> float:
    """(1/T) Σ_t A_t."""
    return sum(seen) / len(seen) if seen else float("nan")


def forgetting(acc: dict[tuple[int, int], float], tasks: int) -> float:
    """(1/(T-1)) Σ_{j<T} (max_{l in j..T-1} a_{l,j} - a_{T,j}); acc[(t, j)] = a_{t,j}."""
    if tasks < 2:
        return float("nan")
    f = [max(acc[(l, j)] for l in range(j, tasks)) - acc[(tasks, j)] for j in range(1, tasks)]
    return sum(f) / len(f)


def _order_note(order: str) -> str:
    try:
        names = json.loads(order)
    except (TypeError, ValueError):
        return ""
    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return f" Class order: {shown}."


def continual_tables(agg: pd.DataFrame) -> list[Table]:
    a = agg[agg["protocol"] == "continual"]
    tables = []
    for (dataset, shots, n_tasks, order), g in a.groupby(["train_dataset", "shots", "n_tasks", "class_order"], sort=True):
        T = int(n_tasks)
        rows = []
        for m in sorted(g["method"].unique()):
            gm = g[g["method"] == m]
            seen = [_cell(gm, subset="seen", task=t) for t in range(1, T + 1)]
            acc = {(t, j): _cell(gm, subset=f"task{j}", task=t).value for t in range(1, T + 1) for j in range(1, t + 1)}
            values = [c.value for c in seen]
            complete = not any(_nan(v) for v in values)
            n = min((c.n for c in seen), default=0)
            avg = Cell(average_incremental(values) if complete else float("nan"), derived=True, n=n)
            own = {(t, j): _cell(gm, subset=f"task{j}-own", task=t).value for t, j in acc}
            forget, forget_own = (Cell(forgetting(x, T) if not any(_nan(v) for v in x.values()) else float("nan"),
                                       derived=True, n=n) for x in (acc, own))
            cells = seen + [avg, forget, forget_own]
            fields = [f"after task {t}" for t in range(1, T)] + ["final", "average incremental", "forgetting",
                                                                 "forgetting within tasks"]
            for f, c in zip(fields, cells):
                c.method, c.dataset, c.field, c.shots = m, str(dataset), f, int(shots)
            rows.append((m, cells))
        most, flagged = _flag(rows)
        cols = [f"after task {t}" for t in range(1, T)] + [f"final (task {T})", "avg. incremental", "forgetting",
                                                           "forgetting within tasks"]
        note = (f"{T} tasks of {dataset}'s classes, {shots} shots, each test image classified among all classes seen "
                "so far. After task t / final: accuracy on every seen class; avg. incremental = mean over the tasks "
                "(Rebuffi et al., iCaRL, CVPR 2017); forgetting = mean over earlier tasks of their best accuracy minus "
                "their final accuracy (Chaudhry et al., RWalk, ECCV 2018), from seed means; within tasks: the same "
                "with each task's test images classified among that task's classes only." + _order_note(order))
        tables.append(Table("continual", "Continual (class-incremental) learning", "Method", cols, [], rows,
                            _notes(most, flagged, note), key=f"{dataset}, {shots}-shot, {T} tasks"))
    return tables
