"""CPU threads: how many this process may really use, and how many it uses.

torch sizes its intra-op pool from the machine (or its affinity mask), not from what the process
is allowed to use: a container or SLURM job limited to a few CPUs by a cgroup quota on a large
node still starts one thread per core, and those threads fight over the quota. And with
torch's default OpenMP settings, threads that wait for each other *spin*; on a machine whose
cores are shared (a busy workstation, other jobs on the node) a spinning thread steals the CPU
the thread it waits for needs, and training becomes many times slower (issue 17: 27 s instead
of 1 s for a toy CoOp run on a busy 2-core machine; numbers in ``benchmarks/threads/``).

So ``cpbench``:

- counts the CPUs it may use: the affinity mask (``os.sched_getaffinity``: taskset, cpusets,
  SLURM's binding), capped by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) and
  by ``SLURM_CPUS_PER_TASK``; it never starts more intra-op threads than that;
- lets waiting threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``, set before torch is
  imported, unless you set it yourself);
- takes an explicit count from ``--threads N``, else ``$CPBENCH_THREADS``, else
  ``$OMP_NUM_THREADS``;
- runs data-loader worker processes with one intra-op thread each (they decode images; they do
  not multiply the pool), and gives each ``--launcher local`` worker its share of the CPUs.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cpbench.errors import UserError

ENV = "CPBENCH_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(path: str) -> list[PurePosixPath]:
    p = PurePosixPath(path if path.startswith("/") else "/" + path)
    return [p, *p.parents]


def _quota(files: list[tuple[str | None, str | None]]) -> float | None:
    """Smallest quota/period among (quota, period) texts; None without a limit."""
    best = None
    for quota, period in files:
        if quota is None or period is None:
            continue
        try:
            q, per = float(quota), float(period)
        except ValueError:
            continue
        if q > 0 and per > 0:
            best = q / per if best is None else min(best, q / per)
    return best


def cgroup_cpu_limit(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup quota (e.g. 2.0 for ``docker --cpus 2``), or None without one.

    Reads this process's cgroup paths from ``/proc/self/cgroup`` and every ancestor's limit (a
    parent's quota binds its children): v2 ``cpu.max`` ("max 100000" = none, "200000 100000" =
    2 CPUs) and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1 = none). Inside a container the
    listed path may not exist under the mount; its root (the container's own cgroup) is read then."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    found: list[tuple[str | None, str | None]] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":  # cgroup v2 (unified)
            for anc in _ancestors(path):
                text = _read(root / anc.relative_to("/") / "cpu.max")
                if text:
                    q, _, per = text.partition(" ")
                    found.append((None if q == "max" else q, per or "100000"))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                for anc in _ancestors(path):
                    d = mount / anc.relative_to("/")
                    found.append((_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")))
    return _quota(found)


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_cpus(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT,
                   env: dict | None = None) -> tuple[int, str]:
    """(CPUs this process may use, how that was found)."""
    env = os.environ if env is None else env
    n, why = affinity_cpus(), "affinity"
    quota = cgroup_cpu_limit(proc_cgroup, root)
    if quota is not None and max(1, math.floor(quota)) < n:
        n, why = max(1, math.floor(quota)), f"cgroup quota {quota:g} CPUs"
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and 0 < int(slurm) < n:
        n, why = int(slurm), "SLURM_CPUS_PER_TASK"
    return n, why


@dataclass(frozen=True)
class ThreadPlan:
    threads: int        # intra-op threads of this process
    available: int      # CPUs it may use
    source: str         # where the count came from

    def describe(self) -> str:
        if self.source.startswith(("--", "$")):
            return f"{self.threads} CPU thread(s) (from {self.source}; {self.available} CPU(s) available)"
        limit = "" if self.source == "affinity" else f", set by the {self.source}"
        return f"{self.threads} CPU thread(s) (the CPUs this process may use{limit})"


def _parse(value, what: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{what} must be a positive number of threads or `auto`, got {value!r}")
    return int(text)


def plan(requested: str | int | None = None, env: dict | None = None, available: tuple[int, str] | None = None
         ) -> ThreadPlan:
    """``requested`` (``--threads``): a number, ``auto`` or None. An explicit number wins (it may
    exceed the CPUs: your choice); otherwise ``$CPBENCH_THREADS``, then ``$OMP_NUM_THREADS``, then
    every CPU this process may use."""
    env = os.environ if env is None else env
    n, why = available or available_cpus(env=env)
    if requested not in (None, "", "auto"):
        return ThreadPlan(_parse(requested, "--threads"), n, "--threads")
    for var in (ENV, "OMP_NUM_THREADS"):
        value = env.get(var, "").strip()
        if value and value != "auto":
            return ThreadPlan(_parse(value, f"${var}"), n, f"${var}")
    return ThreadPlan(n, n, why)


def share(p: ThreadPlan, workers: int) -> int:
    """Threads for each of ``workers`` processes that share this process's CPUs."""
    return max(1, p.threads // max(1, workers))


def prefer_passive_wait(env: dict | None = None) -> None:
    """Waiting OpenMP threads sleep instead of spinning (unless the user chose). Only effective
    before torch (its OpenMP runtime) is loaded, so the CLI calls it first thing."""
    env = os.environ if env is None else env
    if "torch" not in sys.modules:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply(p: ThreadPlan) -> None:
    import torch

    if torch.get_num_threads() != p.threads:
        torch.set_num_threads(p.threads)


def loader_worker_init(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """Data-loader workers decode and augment images: one intra-op thread each, so N workers add
    N threads, not N times the pool."""
    import torch

    torch.set_num_threads(1)
