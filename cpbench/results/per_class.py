"""``cpbench report --per-class DATASET``: where the accuracy of each entry comes from.

For every evaluation of DATASET in the results (one *view* per protocol, training dataset,
subset and shots: base2new gives a base and a new view), from the stored per-image predictions:

- **per-class accuracy** of each entry, pooled over its seeds (all seeds test the same images,
  so this is the mean over seeds of each class's accuracy), with each class's test images and
  the spread (largest − smallest accuracy among the entries). The last row weighs the classes by
  their test images and gives back the table's accuracy (the seed mean of the results rows);
- **the classes where the entries differ most**: ranked by the lower end of a 95 % interval of
  the difference between the best and the worst entry on the class (Agresti–Caffo: one success and
  one failure added to each side, the class's test images as the sample size; the seeds repeat
  the same images, so they do not add to it). A 30-point spread on a 10-image class is mostly
  noise and ranks below a 10-point difference on 200 images;
- **top confusions** of each entry: the (true class, predicted class) pairs with the most images
  over all seeds, and their share of the true class's images.

``plots.per_class`` draws the per-class table as a PNG (``--plots DIR``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpbench.errors import UserError
from cpbench.results.entries import CELL
from cpbench.results.intervals import Samples, row_key
from cpbench.results.table import Cell, Entry, Row, Table

MOST_DIFFERENT = 10
Z95 = 1.959963984540054
TOP_CONFUSIONS = 5


def check(dataset: str, df: pd.DataFrame) -> None:
    if dataset not in set(df["eval_dataset"]):
        have = ", ".join(sorted(set(df["eval_dataset"])))
        raise UserError(f"--per-class {dataset}: no results on {dataset} among the selected rows (datasets: {have})")


def _view_name(protocol: str, train: str, eval_: str, subset: str, shots: int, task: int = 0, n_tasks: int = 0,
               class_order: str = "", recall_at: int = 0) -> str:
    source = f", trained on {train}" if train != eval_ else ""
    after = f", after task {task}/{n_tasks} ({class_order})" if n_tasks else ""
    return f"{eval_}/{subset}, {protocol}{source}, {shots}-shot{after}"


def difference_interval(p_hi: np.ndarray, p_lo: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Agresti–Caffo 95 % interval (points) of p_hi − p_lo, proportions each of ``n`` images."""
    a, b = (p_hi * n + 1) / (n + 2), (p_lo * n + 1) / (n + 2)
    half = Z95 * np.sqrt(a * (1 - a) / (n + 2) + b * (1 - b) / (n + 2))
    return 100 * (a - b - half), 100 * (a - b + half)


def _counts(samples: Samples, key: tuple, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images per class, correct per class, confusion counts n_classes x n_classes), all seeds pooled."""
    m = samples.cells[key]
    size = np.zeros(n_classes, dtype=np.int64)
    right = np.zeros(n_classes, dtype=np.int64)
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    for o in m.outcomes:
        label, pred = o.label.astype(np.int64), o.pred.astype(np.int64)
        size += np.bincount(label, minlength=n_classes)
        right += np.bincount(label[label == pred], minlength=n_classes)
        np.add.at(conf, (label, pred), 1)
    return size // len(m.outcomes), right, conf


def tables(df: pd.DataFrame, outcomes: dict, entries: dict[str, Entry], dataset: str) -> list[Table]:
    rows = df[df["eval_dataset"] == dataset]
    samples = Samples(rows, outcomes)
    out = []
    for view, g in rows.groupby(list(CELL), sort=True):
        protocol, train, eval_, subset, shots = row_key("", view)[1:6]
        keys = [row_key(e, view) for e in g["entry"].unique()]
        order = {k: i for i, k in enumerate(entries)}
        have = sorted((k for k in keys if k in samples.cells), key=lambda k: order.get(k[0], len(order)))
        lacking = sorted(entries[k[0]].label for k in keys if k not in samples.cells)
        name = _view_name(*row_key("", view)[1:])
        if not have:
            out.append(Table(protocol, "Per-class accuracy", ["Class"], [], [], kind="per_class", key=name,
                             notes=[f"No per-image predictions for {', '.join(lacking)} (rows from before cpbench stored "
                                    "them); re-run those jobs with --force to see their classes."]))
            continue
        names = max((o.classnames for k in have for o in samples.cells[k].outcomes), key=len)
        n_classes = max(len(names), 1 + max(int(max(o.label.max(initial=0), o.pred.max(initial=0)))
                                            for k in have for o in samples.cells[k].outcomes))
        names = list(names) + [f"class {i}" for i in range(len(names), n_classes)]
        ents = [entries[k[0]] for k in have]
        counted = [_counts(samples, k, n_classes) for k in have]
        size = counted[0][0]
        seeds = [len(samples.cells[k].seeds) for k in have]
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.stack([100.0 * right / (size * s) for (_, right, _), s in zip(counted, seeds)])  # (E, C)
        spread = acc.max(axis=0) - acc.min(axis=0) if len(ents) > 1 else None
        cols = ["images"] + [e.label for e in ents] + (["spread"] if spread is not None else [])

        def class_row(c: int) -> Row:
            cells = [Cell(float(size[c]), digits=0, dataset=names[c], field="images")]
            cells += [Cell(float(acc[i, c]), entry=e, dataset=names[c], field="accuracy", n=seeds[i],
                           shots=shots) for i, e in enumerate(ents)]
            if spread is not None:
                cells.append(Cell(float(spread[c]), derived=True, dataset=names[c], field="spread"))
            return Row((names[c],), cells)

        present = [c for c in range(n_classes) if size[c] > 0]
        weighted = [Cell(float(size.sum()), digits=0, dataset="All", field="images")]
        weighted += [Cell(float(np.sum(acc[i, present] * size[present]) / size[present].sum()), entry=e, dataset="All",
                          field="accuracy", derived=True, n=seeds[i], shots=shots) for i, e in enumerate(ents)]
        if spread is not None:
            all_acc = [c.value for c in weighted[1:]]
            weighted.append(Cell(max(all_acc) - min(all_acc), derived=True, dataset="All", field="spread"))
        notes = [f"Per-class accuracy pooled over each entry's seeds ({', '.join(f'{e.label}: {s}' for e, s in zip(ents, seeds))});"
                 " All = classes weighted by their test images (the table's accuracy)."
                 + (" spread = largest − smallest accuracy among the entries." if spread is not None else "")]
        if lacking:
            notes.append(f"No per-image predictions for {', '.join(lacking)}.")
        out.append(Table(protocol, "Per-class accuracy", ["Class"], cols,
                         [class_row(c) for c in present] + [Row(("All (weighted)",), weighted, average=True)],
                         notes=notes, key=name, kind="per_class", trained_on=train if train != eval_ else ""))
        if spread is not None:
            low, high = difference_interval(acc.max(axis=0) / 100, acc.min(axis=0) / 100, size.astype(float))
            top = sorted(present, key=lambda c: (-low[c], c))[:MOST_DIFFERENT]
            clear = sum(1 for c in present if low[c] > 0)

            def top_row(c: int) -> Row:
                r = class_row(c)
                r.cells.append(Cell(float(spread[c]), derived=True, dataset=names[c], field="difference",
                                    ci=(float(low[c]), float(high[c]))))
                return r

            out.append(Table(protocol, "Classes where the entries differ most", ["Class"],
                             cols + ["difference [95 %]"], [top_row(c) for c in top], key=name, kind="per_class_top",
                             notes=[f"The {len(top)} classes whose difference between the best and the worst entry "
                                    "is largest at the lower end of its 95 % interval (Agresti–Caffo, the class's "
                                    "test images as the sample size), so small classes need a large difference; "
                                    f"{clear} of {len(present)} classes have an interval above 0."]))
        conf_rows = []
        for e, (_, _, conf), s in zip(ents, counted, seeds):
            off = conf.copy()
            np.fill_diagonal(off, 0)
            flat = np.argsort(-off, axis=None, kind="stable")[:TOP_CONFUSIONS]
            for t_, p_ in zip(*np.unravel_index(flat, off.shape)):
                if off[t_, p_] == 0:
                    break
                conf_rows.append(Row((e.label, names[t_], names[p_]), [
                    Cell(float(off[t_, p_]), digits=0, entry=e, dataset=names[t_], field="images"),
                    Cell(100.0 * off[t_, p_] / (size[t_] * s), entry=e, dataset=names[t_], field="share")]))
        out.append(Table(protocol, "Top confusions", ["Method", "True class", "Predicted as"],
                         ["images (all seeds)", "% of the true class"], conf_rows, key=name, kind="confusions",
                         notes=[f"Up to {TOP_CONFUSIONS} most frequent (true, predicted) pairs per entry, counted over "
                                "all its seeds."]))
    return out
