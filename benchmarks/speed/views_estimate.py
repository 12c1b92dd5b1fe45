"""The training-view store's saving for the base-to-new suite (11 datasets x 3 seeds, 16 shots),
estimated from the suite's own configuration: counted, not timed.

For each text-side method the script resolves every job's configuration (epochs, precision)
exactly as ``cpbench run`` does and counts frozen image-encoder passes over training views:

- without the store, every method encodes every view of every epoch it trains:
  sum over methods of epochs x images;
- with it, each (dataset, seed, precision) group's views of epoch e are encoded once, by the
  first method that reaches that epoch: max over the group's methods of epochs x images.

Training images = 16 shots x the base classes (half of each dataset's classes, rounded up, as
the base/new split). Disk = views x embedding width (512 for ViT-B/16) x bytes per element
(the encoder returns fp16 under fp16, amp and bf16, fp32 under fp32). A step's text side is not counted: the store saves
only the image side. Output: one JSON line per group of methods.

    python benchmarks/speed/views_estimate.py [--methods coop kgcoop prograd cocoop coop_lamm]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

# classes of the 11 datasets (CoOp's splits); base = the first half, rounded up
CLASSES = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102,
           "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101}
SEEDS = (1, 2, 3)
SHOTS = 16
WIDTH = 512   # ViT-B/16's embedding


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["coop", "kgcoop", "prograd", "cocoop", "coop_lamm"])
    args = ap.parse_args(argv)
    from cpbench.methods.registry import get_method_class
    from cpbench.protocols import base2new
    from cpbench.protocols.jobs import RunSettings, job_config

    s = RunSettings(data_root=Path("data"), results_root=Path("results"))
    without = 0
    groups: dict[tuple, list[int]] = defaultdict(list)   # (dataset, seed, precision) -> epochs of each method
    bytes_per = {}
    for m in args.methods:
        if not get_method_class(m).view_store:
            raise SystemExit(f"{m} does not use the training-view store")
        for d, c in CLASSES.items():
            n = SHOTS * -(-c // 2)
            for seed in SEEDS:
                job = base2new.plan(m, [d], [seed], SHOTS)[0]
                cfg = job_config(job, s).train
                without += cfg.epochs * n
                groups[d, seed, cfg.precision].append(cfg.epochs)
                bytes_per[d, seed, cfg.precision] = 2 if cfg.precision in ("fp16", "amp", "bf16") else 4
    with_store = sum(max(e) * SHOTS * -(-CLASSES[d] // 2) for (d, _, _), e in groups.items())
    disk = sum(max(e) * SHOTS * -(-CLASSES[d] // 2) * WIDTH * bytes_per[k] for k, e in groups.items()
               for d in [k[0]])
    print(json.dumps({"bench": "views_estimate", "suite": "base2new, 11 datasets x 3 seeds, 16 shots",
                      "methods": args.methods, "precisions": sorted({k[2] for k in groups}),
                      "encoder_passes_without_store": without, "encoder_passes_with_store": with_store,
                      "image_side_reduction": round(without / with_store, 2),
                      "store_disk_gib": round(disk / 2**30, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
