"""Throughput (jobs/hour) of the local launcher with N workers per GPU, N = 1, 2, 4.

    python benchmarks/speed/jobs_per_gpu.py --root data [--gpu 0 | --gpu cpu] [--jobs 8] [--epochs 2]

Each N runs the same K toy jobs (CoOp base-to-new on toy_shapes, seeds 1..K, a few epochs, no
feature cache so every job encodes its own test images) into a fresh results folder, through
``cpbench.launch.local.run_local`` exactly as ``cpbench run --launcher local --jobs-per-gpu N``.
On a machine without a GPU, CPU workers stand in (``--gpu cpu``): the figure then measures the
pool mechanics and the host's cores, not a GPU. Needs ``cpbench prepare toy``. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Recorder, loadavg  # noqa: E402


def jobs_per_hour(root: Path, gpu: str, workers: int, n_jobs: int, epochs: int, backbone: str = "toy") -> dict:
    from cpbench.launch import settings_payload
    from cpbench.launch.local import run_local, worker_slots
    from cpbench.protocols import base2new
    from cpbench.protocols.jobs import RunSettings

    out = Path(tempfile.mkdtemp(prefix=f"cpbench-jobs-{workers}-"))
    try:
        s = RunSettings(data_root=root.resolve(), results_root=out, backbone=backbone,
                        pretrained="toy" if backbone == "toy" else "none",
                        sets=[f"epochs={epochs}", "precision=fp32"], feature_cache=False)
        jobs = base2new.plan("coop", ["toy_shapes"], list(range(1, n_jobs + 1)), 16)
        device = "cpu" if gpu == "cpu" else "auto"
        t0 = time.perf_counter()
        summary = run_local(jobs, {**settings_payload(s), "device": device}, worker_slots([gpu], workers),
                            say=lambda m: None, headroom_gib=1.0)
        dt = time.perf_counter() - t0
        return {"bench": "jobs_per_gpu", "gpu": gpu, "workers_per_gpu": workers, "jobs": n_jobs, "epochs": epochs,
                "done": len(summary.done), "failed": len(summary.failed), "seconds": round(dt, 1),
                "jobs_per_hour": round(3600 * len(summary.done) / dt, 1),
                "first_error": summary.failed[0][1] if summary.failed else None}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data"))
    ap.add_argument("--gpu", default="cpu", help="a GPU index, or cpu for CPU workers")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from cpbench.data import prepare as prep

    prep.load("toy_shapes", args.root)   # one clear line if the toy world is not prepared
    rec = Recorder(args.out)
    base = None
    for n in args.workers:
        row = jobs_per_hour(args.root, args.gpu, n, args.jobs, args.epochs)
        base = base or row["jobs_per_hour"]
        rec({**row, "vs_one_worker": round(row["jobs_per_hour"] / base, 2) if base else None, "loadavg": loadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
