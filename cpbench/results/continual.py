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

from cpbench.results.layouts import PROTOCOL_TITLES, Cells, _derived, _entry_rows, _flag_and_notes
from cpbench.results.table import Entry, Table, isnan


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


def continual_tables(cells: Cells, agg: pd.DataFrame, entries: list[Entry]) -> list[Table]:
    """One table per (dataset, shots, task count, class order); rows are entries."""
    a = agg[agg["protocol"] == "continual"]
    tables = []
    for (dataset, shots, n_tasks, order), g in a.groupby(["train_dataset", "shots", "n_tasks", "class_order"], sort=True):
        T, shots, dataset = int(n_tasks), int(shots), str(dataset)

        def cell(e: Entry, subset: str, task: int, field: str):
            return cells.get(e, "continual", dataset, dataset, subset, shots, field, task=task, n_tasks=T,
                             class_order=order)

        fields = [f"after task {t}" for t in range(1, T)] + ["final"]
        rows = _entry_rows(g, entries, fields, lambda e, f: cell(e, "seen", fields.index(f) + 1, f))
        for r in rows:
            e, seen = r.cells[0].entry, list(r.cells)
            acc = {(t, j): cell(e, f"task{j}", t, "").value for t in range(1, T + 1) for j in range(1, t + 1)}
            own = {(t, j): cell(e, f"task{j}-own", t, "").value for t, j in acc}
            values = [c.value for c in seen]
            r.cells.append(_derived(average_incremental(values) if not any(isnan(v) for v in values)
                                    else float("nan"), seen, e, dataset, "average incremental", shots))
            for x, f in ((acc, "forgetting"), (own, "forgetting within tasks")):
                r.cells.append(_derived(forgetting(x, T) if not any(isnan(v) for v in x.values()) else float("nan"),
                                        seen, e, dataset, f, shots))
        cols = [f"after task {t}" for t in range(1, T)] + [f"final (task {T})", "avg. incremental", "forgetting",
                                                           "forgetting within tasks"]
        note = (f"{T} tasks of {dataset}'s classes, {shots} shots, each test image classified among all classes seen "
                "so far. After task t / final: accuracy on every seen class; avg. incremental = mean over the tasks "
                "(Rebuffi et al., iCaRL, CVPR 2017); forgetting = mean over earlier tasks of their best accuracy minus "
                "their final accuracy (Chaudhry et al., RWalk, ECCV 2018), from seed means; within tasks: the same "
                "with each task's test images classified among that task's classes only." + _order_note(order))
        tables.append(Table("continual", PROTOCOL_TITLES["continual"], ["Method"], cols, rows,
                            notes=_flag_and_notes(rows, note, cells), key=f"{dataset}, {shots}-shot, {T} tasks"))
    return tables
