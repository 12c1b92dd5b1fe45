"""Bytes the per-image predictions cost (issue 20).

1. ``--results DIR``: the predictions files of a real results folder, per 1,000 stored images.
2. A full base-to-new suite of one method (the 11 datasets x 3 seeds, each job evaluating its
   dataset's base and new test halves), written with ``cpbench.results.predictions.write`` from
   simulated outcomes: the official test-split sizes and class counts (CoOp's table, as in the
   reference protocol notes), class-sorted labels as in CoOp's split files, 75 % of images right,
   a wrong prediction a uniformly drawn other class, the true-class probability from a Beta
   distribution (high when right, low when wrong). Also written with top-5 labels added, to show
   what that would cost.

    python benchmarks/report/predictions_size.py [--results DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cpbench.results import predictions as preds

# dataset: (classes, test images); base = the first ceil(n/2) classes
SUITE = {"imagenet": (1000, 50000), "caltech101": (100, 2465), "oxford_pets": (37, 3669),
         "stanford_cars": (196, 8041), "oxford_flowers": (102, 2463), "food101": (101, 30300),
         "fgvc_aircraft": (100, 3333), "sun397": (397, 19850), "dtd": (47, 1692), "eurosat": (10, 8100),
         "ucf101": (101, 3783)}


def simulated(classes: int, n: int, g: np.random.Generator, top5: bool):
    labels = np.sort(g.integers(0, classes, n))
    right = g.random(n) < 0.75
    pred = np.where(right, labels, (labels + 1 + g.integers(0, max(1, classes - 1), n)) % classes)
    p = np.where(right, g.beta(8, 2, n), g.beta(2, 8, n)).astype(np.float16)
    five = None
    if top5:
        five = np.stack([pred] + [(pred + 1 + g.integers(0, max(1, classes - 1), n)) % classes for _ in range(4)], 1)
    return labels, pred, p, five


def suite(out: Path, top5: bool) -> tuple[int, int]:
    g = np.random.default_rng(0)
    total_bytes = total_images = 0
    for d, (classes, n) in SUITE.items():
        base_classes = math.ceil(classes / 2)
        halves = {"base": (base_classes, round(n * base_classes / classes)),
                  "new": (classes - base_classes, n - round(n * base_classes / classes))}
        for seed in (1, 2, 3):
            evals, start, fives = [], 0, []
            for subset, (k, m) in halves.items():
                labels, pred, p, five = simulated(k, m, g, top5)
                evals.append(preds.Evaluation(f"run{seed}{d}", d, subset, preds.Outcome(
                    np.arange(start, start + m, dtype=np.int32), labels, pred, p, tuple(f"c{i}" for i in range(k)))))
                start += m
                fives.append(five)
                total_images += m
            path = preds.write(out, f"coop-{d}-s{seed}", evals)
            if top5:  # the same file with a fixed-size list of the 5 best labels per image
                t = pq.read_table(path)
                five = np.concatenate(fives).astype(np.int16)
                t = t.append_column("top5", pa.FixedSizeListArray.from_arrays(pa.array(five.reshape(-1)), 5))
                pq.write_table(t, path, compression="zstd")
            total_bytes += path.stat().st_size
    return total_bytes, total_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path)
    a = ap.parse_args()
    if a.results:
        files = sorted((a.results / preds.FOLDER).glob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        images = sum(pq.read_metadata(f).num_rows for f in files)
        print(f"{a.results}: {len(files)} files, {images} stored images, {size} bytes, "
              f"{1000 * size / images:.0f} bytes per 1,000 images")
    for top5 in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            size, images = suite(Path(tmp), top5)
        print(f"full base-to-new suite, one method (11 datasets x 3 seeds = {images} image evaluations)"
              f"{' + top-5' if top5 else ''}: {size / 2**20:.2f} MiB, {1000 * size / images:.0f} bytes per 1,000 images")


if __name__ == "__main__":
    main()
