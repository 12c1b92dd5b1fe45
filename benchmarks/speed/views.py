"""A benchmark suite with and without the training-view store (issue 31), side by side in one
process: text-side methods x datasets x seeds (base-to-new), run in suite order (one method after
another, as ``cpbench run --suite`` does), twice:

- ``store``: the default (test-feature cache + training-view store), from an empty store;
- ``no_store``: the test-feature cache only (``RunSettings.view_store=False``).

A warm-up (the first method on every dataset, one epoch, not timed) fills the test-feature cache
both runs then share, so the two differ in the store alone.

Prints JSON lines (per job, then a summary): wall seconds, the rows' ``train_seconds``, the
store's size on disk, and whether every row's accuracy is identical in both runs.

    python benchmarks/speed/views.py --root data --out benchmarks/speed/results-views-cpu.jsonl

Needs `cpbench prepare toy`. Defaults: ViT-S-32 with random weights (a ViT shape small enough
for minutes on a CPU), toy_shapes + toy_colour_shapes, seeds 1 2, 4 shots, 2 epochs,
coop kgcoop pre prograd clip_adapter (one store context on a CPU, where every precision is fp32).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Recorder, loadavg, machine  # noqa: E402


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def run_suite(args, backbone, view_store: bool, rec, cache: Path) -> tuple[dict, float, dict]:
    """(accuracy per row key, wall seconds, extra) of the whole suite with the cache folder ``cache``."""
    from cpbench.protocols import base2new
    from cpbench.protocols.execute import run_job
    from cpbench.protocols.jobs import RunSettings
    from cpbench.results.store import ResultStore

    work = Path(tempfile.mkdtemp(prefix="cpbench-views-bench-"))
    os.environ["CPBENCH_CACHE"] = str(cache)   # read on every use (paths.cache_root)
    s = RunSettings(data_root=args.root, results_root=work / "results", backbone=args.backbone,
                    pretrained=args.pretrained, sets=[f"epochs={args.epochs}"], feature_cache=True,
                    view_store=view_store)
    store = ResultStore(s.results_root)
    name = "store" if view_store else "no_store"
    t_all = time.perf_counter()
    for method in args.methods:                      # suite order: one method after another
        for job in base2new.plan(method, args.datasets, args.seeds, args.shots):
            t0 = time.perf_counter()
            run_job(job, backbone, s, store)
            rec({"bench": "views_job", "run": name, "method": method, "dataset": job.train_dataset,
                 "seed": job.seed, "wall_s": round(time.perf_counter() - t0, 2)})
    wall = time.perf_counter() - t_all
    frame = store.read().frame
    acc = {(r.method, r.train_dataset, r.seed, r.subset): (r.accuracy, r.correct) for r in frame.itertuples()}
    extra = {"train_seconds": round(float(frame.drop_duplicates("job_key").train_seconds.sum()), 2),
             "views_bytes": du(cache / "views"), "features_bytes": du(cache / "features")}
    return acc, wall, extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backbone", default="ViT-S-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--methods", nargs="+", default=["coop", "kgcoop", "pre", "prograd", "clip_adapter"])
    ap.add_argument("--datasets", nargs="+", default=["toy_shapes", "toy_colour_shapes"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    from cpbench.models.backbone import load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recorder(args.out)
    rec({"bench": "machine", **machine(), "command": " ".join(["python", *sys.argv]), "loadavg_start": loadavg(),
         "torch_threads": torch.get_num_threads()})
    backbone = load_backbone(args.backbone, args.pretrained)
    cache = Path(tempfile.mkdtemp(prefix="cpbench-views-cache-"))
    warm = argparse.Namespace(**{**vars(args), "methods": args.methods[:1], "seeds": args.seeds[:1], "epochs": 1})
    run_suite(warm, backbone, False, lambda r: None, cache)   # warm-up: test features, first-call costs
    results = {}
    for view_store in (True, False):
        results[view_store] = run_suite(args, backbone, view_store, rec, cache)
    (acc_on, wall_on, ex_on), (acc_off, wall_off, ex_off) = results[True], results[False]
    rec({"bench": "views_suite", "backbone": f"{args.backbone} ({args.pretrained})", "methods": args.methods,
         "datasets": args.datasets, "seeds": args.seeds, "shots": args.shots, "epochs": args.epochs,
         "jobs": len(args.methods) * len(args.datasets) * len(args.seeds),
         "wall_s": {"store": round(wall_on, 1), "no_store": round(wall_off, 1)},
         "wall_speedup": round(wall_off / wall_on, 2),
         "train_seconds": {"store": ex_on["train_seconds"], "no_store": ex_off["train_seconds"]},
         "train_speedup": round(ex_off["train_seconds"] / max(1e-9, ex_on["train_seconds"]), 2),
         "views_bytes": ex_on["views_bytes"], "features_bytes": ex_on["features_bytes"],
         "rows": len(acc_on), "identical_accuracies": acc_on == acc_off, "loadavg_end": loadavg()})
    return 0 if acc_on == acc_off else 1


if __name__ == "__main__":
    raise SystemExit(main())
