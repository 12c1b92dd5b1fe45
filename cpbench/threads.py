"""CPU threads: how many this process may really use, how many it uses, and how they wait.

torch sizes its intra-op pool from the machine (or its affinity mask), not from what the process
is allowed to use: a container or SLURM job limited to a few CPUs by a cgroup quota on a large
node still starts one thread per core, and those threads fight over the quota. And how OpenMP
threads wait for each other pays differently by machine: a *spinning* thread (``OMP_WAIT_POLICY=
ACTIVE``) wakes at once, which on idle CPUs made the toy CoOp step 1.6x faster than sleeping
threads (issue 29); on CPUs other programs use it steals the CPU the thread it waits for needs,
and training became many times slower (issue 17: 27 s instead of 1 s). Numbers in
``benchmarks/threads/``.

So ``cpbench run``, before torch loads (OpenMP reads the policy once):

- counts the CPUs it may use: the affinity mask (``os.sched_getaffinity``: taskset, cpusets,
  SLURM's binding), capped by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) and
  by ``SLURM_CPUS_PER_TASK``; it never starts more intra-op threads than that;
- uses one thread for a backbone whose ops are too small to split (towers narrower than
  ``SMALL_WIDTH``, such as ``tiny``), every CPU it may use otherwise;
- samples how idle those CPUs are (``/proc/stat``, ~80 ms): spinning waits when they are idle
  enough for every thread (and the run trains here, on the CPU), sleeping waits otherwise;
- takes an explicit count from ``--threads N``, else ``$CPBENCH_THREADS``, else
  ``$OMP_NUM_THREADS``, and an explicit ``$OMP_WAIT_POLICY`` as it is;
- runs data-loader worker processes with one intra-op thread each (they decode images; they do
  not multiply the pool), and gives each ``--launcher local`` worker its share of the CPUs (the
  workers sleep when they wait: they share the CPUs with each other).

Other commands (and launcher workers) keep sleeping waits (``prefer_passive_wait``).
"""

from __future__ import annotations

import glob
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from cpbench.errors import UserError

ENV = "CPBENCH_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
SMALL_WIDTH = 128   # backbones whose widest tower is narrower train as fast on one thread (benchmarks/threads/)
IDLE_SLACK = 0.25   # CPUs' worth of background activity that still counts as idle
SAMPLE_SECONDS = 0.08


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
    wait: str = ""      # OpenMP's waiting policy: ACTIVE (spin), PASSIVE (sleep); "" = not chosen here
    wait_source: str = ""

    def describe(self) -> str:
        if self.source.startswith(("--", "$")):
            text = f"{self.threads} CPU thread(s) (from {self.source}; {self.available} CPU(s) available)"
        elif self.source.startswith("small backbone"):
            text = f"{self.threads} CPU thread(s) ({self.source}: more gain nothing; {self.available} CPU(s) available)"
        else:
            limit = "" if self.source == "affinity" else f", set by the {self.source}"
            text = f"{self.threads} CPU thread(s) (the CPUs this process may use{limit})"
        if self.wait:
            how = {"ACTIVE": "spinning", "PASSIVE": "sleeping"}.get(self.wait.upper(), self.wait)
            text += f", {how} waits ({self.wait_source})"
        return text


def _parse(value, what: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{what} must be a positive number of threads or `auto`, got {value!r}")
    return int(text)


def plan(requested: str | int | None = None, env: dict | None = None, available: tuple[int, str] | None = None,
         width: int | None = None) -> ThreadPlan:
    """``requested`` (``--threads``): a number, ``auto`` or None. An explicit number wins (it may
    exceed the CPUs: your choice); otherwise ``$CPBENCH_THREADS``, then ``$OMP_NUM_THREADS``, then
    one thread for a backbone of ``width`` < ``SMALL_WIDTH``, then every CPU this process may use."""
    env = os.environ if env is None else env
    n, why = available or available_cpus(env=env)
    if requested not in (None, "", "auto"):
        return ThreadPlan(_parse(requested, "--threads"), n, "--threads")
    for var in (ENV, "OMP_NUM_THREADS"):
        value = env.get(var, "").strip()
        if value and value != "auto":
            return ThreadPlan(_parse(value, f"${var}"), n, f"${var}")
    if width is not None and width < SMALL_WIDTH and n > 1:
        return ThreadPlan(1, n, f"small backbone, width {width}")
    return ThreadPlan(n, n, why)


def wait_policy(p: ThreadPlan, idle: float | None, env: dict, here: bool = True) -> tuple[str, str]:
    """(OMP_WAIT_POLICY, why) for plan ``p``: the user's ``$OMP_WAIT_POLICY`` as it is; sleeping
    waits for one thread (nothing to wait for), for a run that does not train on this process's
    CPUs (``here`` False: a GPU or launcher workers that share them), when the load is unknown, or
    when the idle share ``idle`` (0-1) of the CPUs this process may use leaves less than one free
    CPU per thread (``IDLE_SLACK`` CPUs of background activity allowed); spinning waits otherwise."""
    user = env.get("OMP_WAIT_POLICY", "").strip()
    if user:
        return user.upper(), "$OMP_WAIT_POLICY"
    if p.threads <= 1:
        return "PASSIVE", "one thread"
    if not here:
        return "PASSIVE", "not training on this CPU"
    if idle is None:
        return "PASSIVE", "CPU load unknown"
    free = idle * p.available
    if p.threads <= p.available and free >= p.threads - IDLE_SLACK:
        return "ACTIVE", f"the CPUs were {idle:.0%} idle"
    return "PASSIVE", f"the CPUs were busy: {idle:.0%} idle"


def _cpu_times(text: str, cpus: set[int] | None) -> tuple[int, int] | None:
    """(idle, total) jiffies summed over ``cpus`` (None: all) from /proc/stat's text."""
    idle = total = 0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        if len(values) < 5:
            continue
        idle += values[3] + values[4]
        total += sum(values)
        found = True
    return (idle, total) if found else None


def idle_fraction(before: str, after: str, cpus: set[int] | None = None) -> float | None:
    """The share of time ``cpus`` were idle between two /proc/stat texts (None: not measurable)."""
    a, b = _cpu_times(before, cpus), _cpu_times(after, cpus)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return min(1.0, max(0.0, (b[0] - a[0]) / (b[1] - a[1])))


def measure_idle(seconds: float = SAMPLE_SECONDS, stat: Path = PROC_STAT) -> float | None:
    """How idle the CPUs this process may use are, sampled over ``seconds`` (None off Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = None
    before = _read(stat)
    if before is None:
        return None
    time.sleep(seconds)
    after = _read(stat)
    return None if after is None else idle_fraction(before, after, cpus)


def likely_cpu(device: str) -> bool:
    """Whether ``--device`` will train on the CPU, told without importing torch: ``cpu``, or
    ``auto`` on a machine without a GPU device node (NVIDIA, AMD)."""
    if device == "cpu":
        return True
    return device == "auto" and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def decide(requested: str | int | None, width: int | None, here: bool, env: dict | None = None) -> ThreadPlan:
    """``cpbench run``'s threads and waiting policy (see the module's docstring); sets
    ``OMP_WAIT_POLICY`` in ``env`` when torch is not loaded yet (afterwards it could not change)."""
    env = os.environ if env is None else env
    p = plan(requested, env, width=width)
    measure = here and p.threads > 1 and not env.get("OMP_WAIT_POLICY", "").strip()
    policy, why = wait_policy(p, measure_idle() if measure else None, env, here)
    if "torch" in sys.modules and not env.get("OMP_WAIT_POLICY", "").strip():
        policy, why = "OpenMP's default", "torch was loaded before the choice"  # its OpenMP runs as it started
    elif not env.get("OMP_WAIT_POLICY", "").strip():
        env["OMP_WAIT_POLICY"] = policy
    return replace(p, wait=policy, wait_source=why)


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
