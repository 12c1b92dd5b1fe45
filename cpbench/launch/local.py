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

Training views (``engine/views.py``): jobs that train on the same images with the same seed
(``view_group``) share the training-view store. The first of a group to start fills it; the
others of the group wait until it has finished (the workers meanwhile take other groups' jobs),
then read it, in parallel: the same views are never computed twice at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from cpbench.errors import Interrupted
from cpbench.launch import dumps, job_payload


@dataclass
class LocalSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0
    by_worker: dict[str, int] = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)   # the workers' JSON answers, in arrival order
    crashed: int = 0                                      # failures that were not user errors (bugs, dead workers)


def view_group(job) -> tuple:
    """Jobs with the same training images and seed: the training-view store's unit of sharing."""
    return (job.protocol, job.train_dataset, job.train_subset, job.shots, job.seed, job.tasks, job.class_order)


class ViewQueue:
    """The jobs in order, except that a job waits while the first job of its ``view_group`` (the
    one filling the training-view store) runs."""

    def __init__(self, jobs):
        self.pending = list(jobs)
        self.filling: dict[tuple, object] = {}   # group -> its first job, while it runs
        self.started: set[tuple] = set()
        self.cond = threading.Condition()

    def take(self, stopping: threading.Event):
        """The next job this worker may run, or None when none is left."""
        with self.cond:
            while self.pending and not stopping.is_set():
                for i, job in enumerate(self.pending):
                    g = view_group(job)
                    if g not in self.filling:
                        del self.pending[i]
                        if g not in self.started:
                            self.started.add(g)
                            self.filling[g] = job
                        return job
                self.cond.wait(timeout=1.0)
            return None

    def finished(self, job) -> None:
        with self.cond:
            g = view_group(job)
            if self.filling.get(g) is job:
                del self.filling[g]
            self.cond.notify_all()


def _spawn(gpu: str, threads: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = "" if gpu == "cpu" else gpu
    if threads:
        env["CPBENCH_THREADS"] = str(threads)  # the worker's share of this machine's CPUs
    return subprocess.Popen([sys.executable, "-m", "cpbench.launch.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, bufsize=1)


def worker_slots(gpus: list[str], jobs_per_gpu: int = 1) -> list[str]:
    """One entry per worker: every listed GPU ``jobs_per_gpu`` times, interleaved so that the
    first jobs spread over the GPUs (``["0", "1"], 2`` -> ``["0", "1", "0", "1"]``)."""
    return [g for _ in range(max(1, int(jobs_per_gpu))) for g in gpus]


def run_local(jobs, settings: dict, gpus: list[str], say=print, threads: int | None = None,
              headroom_gib: float = 0.0) -> LocalSummary:
    """Run ``jobs`` on one worker per entry of ``gpus`` (``worker_slots``: a GPU may appear several
    times); ``settings`` = launch.settings_payload(...). A worker sees only its GPU; ``--device
    auto`` then picks it (``--device cpu`` or a ``cpu`` entry makes CPU workers, which stand in
    for GPUs in the tests). ``threads``: CPU threads of each worker (its share of the CPUs).
    ``headroom_gib``: free GPU memory a worker waits for before each job when its GPU hosts more
    than one worker.

    Ctrl-C / SIGTERM (``Interrupted`` in this thread) stops the workers, which keep their last
    epoch checkpoint, and is raised again with what was saved."""
    shared_gpu = {g for g in gpus if g != "cpu" and gpus.count(g) > 1}
    q = ViewQueue(jobs)
    summary = LocalSummary()
    lock = threading.Lock()
    procs: dict[int, subprocess.Popen] = {}
    stopping = threading.Event()

    def serve(slot: int, gpu: str) -> None:
        name = f"worker{slot}[gpu {gpu}]"
        device = "cpu" if gpu == "cpu" else settings["device"]  # "auto" finds the one visible GPU
        launch = {"headroom_gib": float(headroom_gib) if gpu in shared_gpu else 0.0}
        proc = None
        try:
            while not stopping.is_set():
                job = q.take(stopping)
                if job is None:
                    return
                try:
                    with lock:
                        if stopping.is_set():
                            return
                        if proc is None or proc.poll() is not None:
                            proc = procs[slot] = _spawn(gpu, threads)
                    try:
                        proc.stdin.write(dumps({**job_payload(job, settings, device), "launch": launch}) + "\n")
                        proc.stdin.flush()
                        line = proc.stdout.readline()
                    except (BrokenPipeError, OSError, ValueError):
                        line = ""
                    if stopping.is_set():
                        return
                    if not line:
                        code = proc.wait()
                        ans = {"ok": False, "error": f"worker process died (exit {code}); re-run to resume the job",
                               "user_error": False}
                    else:
                        ans = json.loads(line)
                finally:
                    q.finished(job)
                with lock:
                    summary.answers.append(ans)
                    if ans["ok"]:
                        (summary.skipped if ans.get("skipped") else summary.done).append(job.describe())
                        summary.rows += ans["rows"]
                        summary.by_worker[name] = summary.by_worker.get(name, 0) + 1
                        say(f"{name}: {'skipped (done)' if ans.get('skipped') else 'finished'} {job.describe()}")
                    else:
                        summary.failed.append((job.describe(), ans["error"]))
                        summary.crashed += 0 if ans.get("user_error", True) else 1
                        say(f"{name}: FAILED {job.describe()}: {ans['error']}")
        finally:
            if proc is not None and proc.poll() is None and not stopping.is_set():
                proc.stdin.close()
                proc.wait()

    threads_ = [threading.Thread(target=serve, args=(i, g), daemon=True) for i, g in enumerate(gpus)]
    for t in threads_:
        t.start()
    try:
        for t in threads_:
            t.join()
    except Interrupted as exc:
        stopping.set()
        with lock:
            running = [p for p in procs.values() if p.poll() is None]
        for p in running:  # on a terminal they got the Ctrl-C too; a SIGTERM or a lone SIGINT reaches only us
            p.send_signal(exc.signum)
        for p in running:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        finished = len(summary.done) + len(summary.skipped)
        exc.saved = (f"{finished} of {len(jobs)} job(s) finished and saved; the {len(running)} running one(s) "
                     "keep their last checkpointed epoch")
        raise
    return summary
