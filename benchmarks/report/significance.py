"""Coverage of ``report --ci`` intervals and false-positive rate / power of ``--compare-methods``
in simulated worlds whose truth is known (issue 26).

    PYTHONPATH=TREE python benchmarks/report/significance.py --label after --reps 200 --seeds 1 2 3 5 \
        --out after.json
    python benchmarks/report/significance.py --summary before.json after.json

TREE is the cpbench checkout to measure (its ``cpbench.cli.main`` runs in this process, once per
world: ``cpbench report --results WORLD --ci --compare-methods coop kgcoop``; the numbers are
read back from the markdown it prints). The worlds are written only through the documented
results contract (README "Results"): one Parquet shard per job under ``WORLD/shards/`` with the
README's columns, and the job's per-image predictions in ``WORLD/predictions/<job_key>.parquet``
(``run_id, eval_dataset, subset, index, label, pred, p_true`` and the ``cpbench.classnames``
metadata) - written here with pyarrow, not with cpbench's own writer.

A world: two methods (coop, kgcoop: the same learner under two names), 11 datasets × Base/New,
2,000 test images per half, ``--seeds`` seeds each. Each dataset half has a true accuracy mu
(fixed, 55-92 %); every replication draws a new test sample: image i has a latent difficulty
eta_i ~ N(0, 1), and an evaluation with accuracy a gets image i right when
Phi(sqrt(rho)·eta_i + sqrt(1 − rho)·eps) < a (eps ~ N(0, 1) per evaluation and image; rho = 0.7),
so every evaluation's expected accuracy is exactly a and evaluations agree on the same images as
real classifiers do. A seed shifts a training's accuracy by delta ~ N(0, 2 points) (Base and New
of one training correlated 0.5), independently per method: a = mu + delta (+ effect for coop).
``null``: effect 0 (the truth of every A − B is 0); ``effect``: coop is 4 points better on every
dataset half. Truth for coverage: mu (and mu + effect) of every Base/New cell, HM(mu_B, mu_N),
and the Averages.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import norm

DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101")
N_IMAGES = 2000
N_CLASSES = 50
SEED_SD = 2.0         # points
BASE_NEW_CORR = 0.5
RHO = 0.7             # how much evaluations agree image by image
EFFECT = 4.0          # points, the effect world
A, B = "coop", "kgcoop"
_truth_rng = np.random.default_rng(2026)
MU = {(d, f): float(_truth_rng.uniform(*((70, 92) if f == "base" else (55, 80)))) for d in DATASETS
      for f in ("base", "new")}


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def truth(world: str) -> dict[tuple[str, str, str], float]:
    """(method, dataset or "Average", field) -> the true value."""
    out = {}
    for m in (A, B):
        eff = EFFECT if (world == "effect" and m == A) else 0.0
        for d in DATASETS:
            b, n = MU[(d, "base")] + eff, MU[(d, "new")] + eff
            out[(m, d, "Base")], out[(m, d, "New")], out[(m, d, "HM")] = b, n, hm(b, n)
        ab = float(np.mean([out[(m, d, "Base")] for d in DATASETS]))
        an = float(np.mean([out[(m, d, "New")] for d in DATASETS]))
        out[(m, "Average", "Base")], out[(m, "Average", "New")], out[(m, "Average", "HM")] = ab, an, hm(ab, an)
    return out


def write_world(root: Path, world: str, n_seeds: int, rep: int) -> None:
    g = np.random.default_rng([n_seeds, rep, 0 if world == "null" else 1])
    (root / "shards").mkdir(parents=True)
    (root / "predictions").mkdir()
    labels = np.repeat(np.arange(N_CLASSES), N_IMAGES // N_CLASSES).astype(np.int16)
    cov = SEED_SD ** 2 * np.array([[1.0, BASE_NEW_CORR], [BASE_NEW_CORR, 1.0]])
    for d in DATASETS:
        eta = {f: g.standard_normal(N_IMAGES) for f in ("base", "new")}   # this replication's test sample
        names = {f"{d}/{f}": [f"{f}-class{i}" for i in range(N_CLASSES)] for f in ("base", "new")}
        for m in (A, B):
            eff = EFFECT if (world == "effect" and m == A) else 0.0
            for seed in range(1, n_seeds + 1):
                shift = g.multivariate_normal([0.0, 0.0], cov)
                job_key = f"{m}-base2new-{d}-k16-s{seed}"
                run_id = f"{m}{d}{seed}r{rep}"
                rows, pred_cols = [], {k: [] for k in ("run_id", "eval_dataset", "subset", "index", "label", "pred",
                                                       "p_true")}
                for i, f in enumerate(("base", "new")):
                    acc = np.clip((MU[(d, f)] + eff + shift[i]) / 100, 0.01, 0.99)
                    u = norm.cdf(math.sqrt(RHO) * eta[f] + math.sqrt(1 - RHO) * g.standard_normal(N_IMAGES))
                    right = u < acc
                    pred = np.where(right, labels, (labels + 1) % N_CLASSES).astype(np.int16)
                    n_right = int(right.sum())
                    rows.append({"run_id": run_id, "job_key": job_key, "method": m, "protocol": "base2new",
                                 "train_dataset": d, "eval_dataset": d, "subset": f, "shots": 16, "seed": seed,
                                 "backbone": "ViT-B-16", "pretrained": "openai", "config_hash": "simulated",
                                 "accuracy": 100.0 * n_right / N_IMAGES, "correct": n_right, "n_test": N_IMAGES,
                                 "n_classes": N_CLASSES, "epochs": 10, "precision": "fp16", "train_seconds": 1.0,
                                 "eval_seconds": 1.0, "device": "cuda", "started_at": "2026-01-01T00:00:00",
                                 "finished_at": "2026-01-01T00:00:01", "cpbench_version": "simulated",
                                 "torch_version": "-", "open_clip_version": "-", "imported": ""})
                    offset = 0 if f == "base" else N_IMAGES
                    pred_cols["run_id"] += [run_id] * N_IMAGES
                    pred_cols["eval_dataset"] += [d] * N_IMAGES
                    pred_cols["subset"] += [f] * N_IMAGES
                    pred_cols["index"].append(np.arange(offset, offset + N_IMAGES, dtype=np.int32))
                    pred_cols["label"].append(labels)
                    pred_cols["pred"].append(pred)
                    pred_cols["p_true"].append(np.where(right, 0.8, 0.1).astype(np.float16))
                table = pa.table({"run_id": pa.array(pred_cols["run_id"], pa.string()),
                                  "eval_dataset": pa.array(pred_cols["eval_dataset"], pa.string()),
                                  "subset": pa.array(pred_cols["subset"], pa.string()),
                                  **{k: pa.array(np.concatenate(pred_cols[k])) for k in ("index", "label", "pred",
                                                                                         "p_true")}})
                table = table.replace_schema_metadata({b"cpbench.classnames": json.dumps(names).encode()})
                pq.write_table(table, root / "predictions" / f"{job_key}.parquet")   # predictions before the shard
                pq.write_table(pa.Table.from_pylist(rows), root / "shards" / f"{job_key}.parquet")


def run_report(root: Path) -> str:
    """``cpbench report --results ROOT --ci --compare-methods coop kgcoop`` in this process: its stdout."""
    from cpbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["cpbench", "report", "--results", str(root), "--ci", "--compare-methods", A, B, "--layout", "long"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                if exc.code:
                    raise RuntimeError(f"cpbench report exited {exc.code}: {err.getvalue()}") from None
    finally:
        sys.argv = argv
    return out.getvalue()


def _sections(md: str) -> dict[str, list[list[str]]]:
    """Table rows (cells, stripped) under each ``## `` heading."""
    out, cur = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            cur = line[3:]
            out[cur] = []
        elif cur and line.startswith("|") and not line.startswith("|---"):
            out[cur].append([x.strip() for x in line.strip().strip("|").split("|")])
    return out


INTERVAL = re.compile(r"\[(-?[\d.]+), (-?[\d.]+)\]")


def significant(text: str) -> bool:
    """A difference cell of the markdown paired table called significant: it has a p, and neither
    ``n.s.`` nor ``untestable`` (McNemar's part after ``;`` is not looked at)."""
    main_part = text.split("; McNemar")[0]
    return ("p <" in main_part or "p =" in main_part) and "n.s." not in main_part and "untestable" not in main_part


def measure(md: str, world: str) -> dict:
    sec = _sections(md)
    truth_ = truth(world)
    paired = next(rows for name, rows in sec.items() if name.startswith("Paired comparison"))
    protocol = next(rows for name, rows in sec.items() if name.startswith("Base-to-new"))
    res = {"dataset_cells_significant": 0, "average": {}, "cover": {}}
    for r in paired[1:]:
        dataset, fld, diff = r[0].strip("*"), r[1], r[-1]
        sig = significant(diff)
        if dataset == "Average":
            res["average"][fld] = sig
        elif fld in ("Base", "New"):
            res["dataset_cells_significant"] += sig
    header = protocol[0]
    assert header[:2] == ["Dataset", "Method"], header
    for r in protocol[1:]:
        dataset, method = r[0].strip("*"), r[1]
        for fld, text in zip(header[2:], r[2:]):
            m = INTERVAL.search(text)
            kind = ("average " if dataset == "Average" else "dataset ") + ("HM" if fld == "HM" else "Base/New")
            hit = m is not None and float(m.group(1)) - 0.005 <= truth_[(method, dataset, fld)] <= float(m.group(2)) \
                + 0.005
            c = res["cover"].setdefault(kind, [0, 0])
            c[0] += hit
            c[1] += 1
    return res


def run(label: str, reps: int, seeds: list[int], worlds: list[str], out: Path) -> None:
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("label", label)
    tmp = Path(tempfile.mkdtemp(prefix="cpbench-sim-"))
    try:
        for world in worlds:
            for s in seeds:
                key = f"{world}/{s}"
                done = results.get(key, [])
                t0 = time.perf_counter()
                for rep in range(len(done), reps):
                    root = tmp / f"{world}-{s}-{rep}"
                    write_world(root, world, s, rep)
                    done.append(measure(run_report(root), world))
                    shutil.rmtree(root)
                    if (rep + 1) % 10 == 0:
                        results[key] = done
                        out.write_text(json.dumps(results))
                results[key] = done
                out.write_text(json.dumps(results))
                print(f"{label} {key}: {reps} worlds, {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(files: list[Path]) -> None:
    """Markdown tables of the recorded runs (README)."""
    print("| version | world | seeds | worlds | dataset cells significant, mean of 22 | worlds with > 3 of 22 | "
          "most in one world | Average Base / New / HM significant | coverage: dataset Base/New | dataset HM | "
          "Average Base/New | Average HM |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for f in files:
        res = json.loads(Path(f).read_text())
        for key in sorted((k for k in res if "/" in k), key=lambda k: (k.split("/")[0] != "null", int(k.split("/")[1]))):
            world, s = key.split("/")
            runs = res[key]
            n = len(runs)
            sig = np.array([r["dataset_cells_significant"] for r in runs])
            avg = " / ".join(f"{100 * np.mean([r['average'].get(f, False) for r in runs]):.0f} %"
                             for f in ("Base", "New", "HM"))
            cov = {}
            for r in runs:
                for k, (hit, tot) in r["cover"].items():
                    c = cov.setdefault(k, [0, 0])
                    c[0] += hit
                    c[1] += tot
            cv = [f"{100 * cov[k][0] / cov[k][1]:.1f} %" if k in cov else "–"
                  for k in ("dataset Base/New", "dataset HM", "average Base/New", "average HM")]
            print(f"| {res['label']} | {world} | {s} | {n} | {sig.mean():.2f} ({100 * sig.mean() / 22:.1f} %) | "
                  f"{int(np.sum(sig > 3))} | {int(sig.max())} | {avg} | " + " | ".join(cv) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--worlds", nargs="+", default=["null", "effect"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summary", type=Path, nargs="+")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
    else:
        run(a.label, a.reps, a.seeds, a.worlds, a.out)


if __name__ == "__main__":
    main()
