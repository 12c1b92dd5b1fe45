"""A worker process: ``python -m cpbench.launch.worker`` runs jobs given as JSON payloads.

- ``--payload FILE``: run the one job in FILE (SLURM array tasks);
- no argument: read one JSON payload per line on stdin and answer one JSON line per job on
  stdout (``{"ok": true, "rows": N}`` or ``{"ok": false, "error": "..."}``): the local launcher's
  queue. The backbone is loaded once per worker and reused for every job with the same one.

A payload's optional ``launch`` block carries ``headroom_gib``: on a GPU shared with other
workers, wait (``wait_for_headroom``) until that much GPU memory is free before the job starts.
A job that runs out of GPU memory answers a failure instead of killing the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from cpbench.errors import Interrupted, UserError
from cpbench.interrupts import raise_on_signals
from cpbench.launch import job_from_payload, settings_from_payload


def wait_for_headroom(need_bytes: int, free_bytes: Callable[[], int], timeout_s: float = 900.0,
                      poll_s: float = 5.0, sleep=time.sleep) -> None:
    """Return once ``free_bytes()`` >= ``need_bytes``; raise UserError after ``timeout_s``."""
    waited = 0.0
    while True:
        free = free_bytes()
        if free >= need_bytes:
            return
        if waited >= timeout_s:
            raise UserError(f"the GPU has {free / 2**30:.1f} GiB free, below the {need_bytes / 2**30:.1f} GiB "
                            f"headroom, after {timeout_s:.0f} s; lower --jobs-per-gpu or --gpu-headroom")
        sleep(poll_s)
        waited += poll_s


def _cuda_free_bytes() -> int:
    import torch

    return int(torch.cuda.mem_get_info()[0])


class Worker:
    def __init__(self) -> None:
        self._backbone = None
        self._backbone_key = None

    def run(self, payload: dict) -> dict:
        from cpbench.models.backbone import load_backbone
        from cpbench.protocols.execute import run_job
        from cpbench.results.store import ResultStore

        try:
            job, s = job_from_payload(payload), settings_from_payload(payload)
            headroom = float(payload.get("launch", {}).get("headroom_gib", 0.0))
            if headroom > 0 and s.device.type == "cuda":
                wait_for_headroom(int(headroom * 2**30), _cuda_free_bytes)
            key = (s.backbone, s.pretrained, s.weights)
            if key != self._backbone_key:
                self._backbone, self._backbone_key = load_backbone(s.backbone, s.pretrained, s.weights), key
            rows = run_job(job, self._backbone, s, ResultStore(s.results_root))
            return {"ok": True, "rows": len(rows or []), "skipped": rows is None, "job": job.describe(),
                    "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
        except UserError as exc:
            return {"ok": False, "error": str(exc), "user_error": True, "job": payload.get("job", {}).get("method", "?")}
        except Exception as exc:  # noqa: BLE001 - a bug fails this job, not the worker
            job_name = payload.get("job", {}).get("method", "?")
            if type(exc).__name__ == "OutOfMemoryError":   # torch.OutOfMemoryError (CUDA)
                import torch

                torch.cuda.empty_cache()
                return {"ok": False, "job": job_name, "user_error": False,
                        "error": "out of GPU memory; lower --jobs-per-gpu (re-run to resume the job)"}
            traceback.print_exc(file=sys.stderr)
            return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}", "user_error": False, "job": job_name}


def main(argv: list[str] | None = None) -> int:
    from cpbench import threads

    threads.prefer_passive_wait()  # before torch is imported
    ap = argparse.ArgumentParser(prog="python -m cpbench.launch.worker")
    ap.add_argument("--payload", type=Path, help="run the one job in this JSON file")
    args = ap.parse_args(argv)
    with raise_on_signals():
        try:
            return _serve(args)
        except Interrupted as exc:  # Ctrl-C, the launcher stopping us (it says what was saved), SLURM pre-emption
            if args.payload:
                print(f"worker {os.getpid()}: {exc.line()}", file=sys.stderr, flush=True)
            return exc.exit_code


def _serve(args) -> int:
    from cpbench import threads

    worker = Worker()
    if args.payload:
        payload = json.loads(args.payload.read_text(encoding="utf-8"))
        threads.apply(threads.plan(payload.get("settings", {}).get("threads")))
        res = worker.run(payload)
        print(json.dumps(res), flush=True)
        if not res["ok"]:
            print(f"error: {res['error']}", file=sys.stderr)
        return 0 if res["ok"] else (2 if res.get("user_error") else 1)
    threads.apply(threads.plan())  # $CPBENCH_THREADS: this worker's share, set by the local launcher
    # answers go to the original stdout; anything else printed (libraries, warnings) to stderr
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        proto.write(json.dumps(worker.run(json.loads(line))) + "\n")
        proto.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
