"""Per-image predictions: what every evaluation got right, kept beside the results rows.

``RESULTS/predictions/<job_key>.parquet`` (the job's rows are ``RESULTS/shards/<job_key>.parquet``)
holds one row per test image and evaluation of the job:

- ``run_id``, ``eval_dataset``, ``subset``: the results row it belongs to (a job's rows share
  its ``run_id``; each evaluation is one (eval_dataset, subset));
- ``index`` (int32): the image's position in ``eval_dataset``'s test split (the split file's
  order, all classes), so evaluations of different methods and seeds pair image by image;
- ``label``, ``pred`` (int16; int32 above 32,767 classes): true and predicted label in the
  evaluation's label space (0..n_classes-1, base/new relabelled as CoOp does);
- ``p_true`` (float16): the softmax probability of the true label under the logits the method
  scores with.

The class names of each evaluation (label order) are in the file's key-value metadata
``cpbench.classnames`` (JSON: ``{"<eval_dataset>/<subset>": [names]}``). The file is written
atomically, before the shard: a job whose shard exists therefore has its predictions (unless it
ran before predictions were stored), and a job skipped as done keeps them. Columns are zstd
compressed; strings dictionary-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cpbench import atomic

FOLDER = "predictions"
CLASSNAMES_KEY = b"cpbench.classnames"


@dataclass
class Outcome:
    """One evaluation's per-image outcome."""
    index: np.ndarray        # int32, position in the eval dataset's test split
    label: np.ndarray
    pred: np.ndarray
    p_true: np.ndarray       # float16
    classnames: tuple[str, ...] = ()

    @property
    def correct(self) -> np.ndarray:
        return self.label == self.pred

    @property
    def accuracy(self) -> float:
        """Percent, computed as the results row computes it (bit-identical to the row's)."""
        return 100.0 * int(self.correct.sum()) / len(self.label) if len(self.label) else float("nan")


@dataclass
class Evaluation:
    """One evaluation of a job, as ``execute`` hands it over."""
    run_id: str
    eval_dataset: str
    subset: str
    outcome: Outcome


def path(results_root: Path, job_key: str) -> Path:
    return Path(results_root) / FOLDER / f"{job_key}.parquet"


def split_positions(test_split, items) -> np.ndarray:
    """Each item's position in the dataset's full test split (matched by image path)."""
    where = {it.path: i for i, it in enumerate(test_split)}
    return np.fromiter((where[it.path] for it in items), dtype=np.int32, count=len(items))


def _label_type(evals: list[Evaluation]) -> pa.DataType:
    most = max((len(e.outcome.classnames) for e in evals), default=0)
    top = max((int(max(e.outcome.label.max(initial=0), e.outcome.pred.max(initial=0))) for e in evals), default=0)
    return pa.int16() if max(most, top + 1) <= np.iinfo(np.int16).max else pa.int32()


def write(results_root: Path, job_key: str, evals: list[Evaluation]) -> Path:
    lab = _label_type(evals)
    n = [len(e.outcome.label) for e in evals]
    table = pa.table({
        "run_id": pa.array(np.repeat([e.run_id for e in evals], n).tolist(), pa.string()),
        "eval_dataset": pa.array(np.repeat([e.eval_dataset for e in evals], n).tolist(), pa.string()),
        "subset": pa.array(np.repeat([e.subset for e in evals], n).tolist(), pa.string()),
        "index": pa.array(np.concatenate([e.outcome.index for e in evals] or [np.zeros(0)]).astype(np.int32)),
        "label": pa.array(np.concatenate([e.outcome.label for e in evals] or [np.zeros(0)])).cast(lab),
        "pred": pa.array(np.concatenate([e.outcome.pred for e in evals] or [np.zeros(0)])).cast(lab),
        "p_true": pa.array(np.concatenate([e.outcome.p_true for e in evals] or [np.zeros(0)]).astype(np.float16)),
    })
    names = {f"{e.eval_dataset}/{e.subset}": list(e.outcome.classnames) for e in evals}
    table = table.replace_schema_metadata({CLASSNAMES_KEY: json.dumps(names).encode()})
    out = path(results_root, job_key)
    with atomic.atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out


def read_file(file: Path) -> dict[tuple[str, str, str], Outcome]:
    """``{(run_id, eval_dataset, subset): Outcome}`` of one predictions file."""
    table = pq.read_table(file)
    meta = table.schema.metadata or {}
    names = json.loads(meta.get(CLASSNAMES_KEY, b"{}"))
    cols = {c: table.column(c).to_numpy() for c in ("index", "label", "pred", "p_true")}
    keys = table.select(["run_id", "eval_dataset", "subset"]).to_pandas()
    out = {}
    for (run_id, ds, subset), pos in keys.groupby(["run_id", "eval_dataset", "subset"], sort=False).indices.items():
        out[(run_id, ds, subset)] = Outcome(*(cols[c][pos] for c in ("index", "label", "pred", "p_true")),
                                            tuple(names.get(f"{ds}/{subset}", ())))
    return out


def read(results_root: Path, job_keys, skipped: Callable[[Path, str], None] | None = None
         ) -> dict[tuple[str, str, str], Outcome]:
    """The outcomes stored for these jobs (missing files are skipped: their rows are reported without
    what needs predictions); an unreadable file is skipped too, and named to ``skipped(file, why)``."""
    out: dict[tuple[str, str, str], Outcome] = {}
    for key in sorted(set(job_keys)):
        file = path(results_root, key)
        if not file.exists():
            continue
        try:
            out.update(read_file(file))
        except Exception as exc:  # a half-copied or foreign file: the report says what it cannot show
            if skipped is not None:
                why = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                skipped(file, why.replace(f"'{file}'", "it").replace(str(file), "it"))
            continue
    return out
