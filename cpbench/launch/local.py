"""``--launcher local --gpus 0,1,2,3``: worker processes on local GPUs, all pulling from one queue.

Each worker is ``python -m cpbench.launch.worker`` with ``CUDA_VISIBLE_DEVICES`` set to its GPU;
a thread per worker hands it the next job as a JSON line and waits for its JSON answer. A worker
that dies (out of memory, killed) fails only the job it held and is restarted for the rest;
re-running the command resumes that job from its last checkpoint.

Several jobs per GPU: a GPU listed k times (``--gpus 0,0,0,1,1,1``) or ``--jobs-per-gpu k`` gets k
workers, since one prompt-learning job leaves a large GPU mostly idle. Before each job such a
worker waits until its GPU has ``headroom`` bytes free (``torch.cuda.mem_get_info``; see
``worker.wait_for_headroom``), and a job that still runs out of GPU memory fails alone with a
message saying to lower ``--jobs-per-gpu``.
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


def worker_slots(gpus: list[str], jobs_per_gpu: int = 1) -> list[str]:
    """One entry per worker: every listed GPU ``jobs_per_gpu`` times, interleaved so that the
    first jobs spread over the GPUs (``["0", "1"], 2`` -> ``["0", "1", "0", "1"]``)."""
    return [g for _ in range(max(1, int(jobs_per_gpu))) for g in gpus]


def run_local(jobs, settings: dict, gpus: list[str], say=print, headroom_gib: float = 0.0) -> LocalSummary:
    """Run ``jobs`` on one worker per entry of ``gpus`` (``worker_slots``: a GPU may appear several
    times); ``settings`` = launch.settings_payload(...). A worker sees only its GPU; ``--device
    auto`` then picks it (``--device cpu`` or a ``cpu`` entry makes CPU workers, which stand in
    for GPUs in the tests). ``headroom_gib``: free GPU memory a worker waits for before each job
    when its GPU hosts more than one worker."""
    shared_gpu = {g for g in gpus if g != "cpu" and gpus.count(g) > 1}
    q: queue.Queue = queue.Queue()
    for job in jobs:
        q.put(job)
    summary = LocalSummary()
    lock = threading.Lock()

    def serve(slot: int, gpu: str) -> None:
        name = f"worker{slot}[gpu {gpu}]"
        device = "cpu" if gpu == "cpu" else settings["device"]  # "auto" finds the one visible GPU
        launch = {"headroom_gib": float(headroom_gib) if gpu in shared_gpu else 0.0}
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
                    proc.stdin.write(dumps({**job_payload(job, settings, device), "launch": launch}) + "\n")
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
