"""``--launcher local --gpus 0,1,2,3``: one worker process per GPU, all pulling from one queue.

Each worker is ``python -m cpbench.launch.worker`` with ``CUDA_VISIBLE_DEVICES`` set to its GPU;
a thread per worker hands it the next job as a JSON line and waits for its JSON answer. A worker
that dies (out of memory, killed) fails only the job it held and is restarted for the rest;
re-running the command resumes that job from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from cpbench.launch import dumps, job_payload


@dataclass
class LocalSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0
    by_worker: dict[str, int] = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)   # the workers' JSON answers, in arrival order


def _spawn(gpu: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = "" if gpu == "cpu" else gpu
    return subprocess.Popen([sys.executable, "-m", "cpbench.launch.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, bufsize=1)


def run_local(jobs, settings: dict, gpus: list[str], say=print) -> LocalSummary:
    """Run ``jobs`` on one worker per entry of ``gpus``; ``settings`` = launch.settings_payload(...).
    A worker sees only its GPU; ``--device auto`` then picks it (``--device cpu`` or a ``cpu``
    entry makes CPU workers, which stand in for GPUs in the tests)."""
    q: queue.Queue = queue.Queue()
    for job in jobs:
        q.put(job)
    summary = LocalSummary()
    lock = threading.Lock()

    def serve(slot: int, gpu: str) -> None:
        name = f"worker{slot}[gpu {gpu}]"
        device = "cpu" if gpu == "cpu" else settings["device"]  # "auto" finds the one visible GPU
        proc = None
        try:
            while True:
                try:
                    job = q.get_nowait()
                except queue.Empty:
                    return
                if proc is None or proc.poll() is not None:
                    proc = _spawn(gpu)
                try:
                    proc.stdin.write(dumps(job_payload(job, settings, device)) + "\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if not line:
                    code = proc.wait()
                    ans = {"ok": False, "error": f"worker process died (exit {code}); re-run to resume the job"}
                else:
                    ans = json.loads(line)
                with lock:
                    summary.answers.append(ans)
                    if ans["ok"]:
                        (summary.skipped if ans.get("skipped") else summary.done).append(job.describe())
                        summary.rows += ans["rows"]
                        summary.by_worker[name] = summary.by_worker.get(name, 0) + 1
                        say(f"{name}: {'skipped (done)' if ans.get('skipped') else 'finished'} {job.describe()}")
                    else:
                        summary.failed.append((job.describe(), ans["error"]))
                        say(f"{name}: FAILED {job.describe()}: {ans['error']}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.stdin.close()
                proc.wait()

    threads = [threading.Thread(target=serve, args=(i, g), daemon=True) for i, g in enumerate(gpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary
