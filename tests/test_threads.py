"""CPU threads (issue 17): the count comes from the CPUs this process may use (affinity, cgroup
v1/v2 quota, SLURM), never more unless asked; an explicit choice wins; data-loader workers run
one thread each; local launcher workers share the CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpbench import threads
from cpbench.errors import UserError


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_and_its_parents(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "slurm" / "cpu.max", "800000 100000\n")               # the job: 8 CPUs
    _write(tmp_path / "slurm" / "step_0" / "cpu.max", "max 100000\n")      # the step: no own limit
    assert threads.cgroup_cpu_limit("0::/slurm/step_0\n", tmp_path) == 8.0
    _write(tmp_path / "slurm" / "step_0" / "cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit("0::/slurm/step_0\n", tmp_path) == 1.5
    assert threads.cgroup_cpu_limit("0::/elsewhere\n", tmp_path) is None    # only the root, unlimited


def test_cgroup_v2_in_a_container_reads_the_mounted_root(tmp_path):
    _write(tmp_path / "cpu.max", "200000 100000\n")   # docker --cpus 2: the container's own cgroup at the root
    assert threads.cgroup_cpu_limit("0::/docker/abc123\n", tmp_path) == 2.0


def test_cgroup_v1_quota(tmp_path):
    d = tmp_path / "cpu,cpuacct" / "job"
    _write(d / "cpu.cfs_quota_us", "400000\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    text = "4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n"
    assert threads.cgroup_cpu_limit(text, tmp_path) == 4.0
    _write(d / "cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(text, tmp_path) is None


def test_available_cpus_takes_the_smallest_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 64)
    _write(tmp_path / "cpu.max", "800000 100000\n")
    assert threads.available_cpus("0::/\n", tmp_path, env={}) == (8, "cgroup quota 8 CPUs")
    _write(tmp_path / "cpu.max", "50000 100000\n")  # half a CPU still gets one thread
    assert threads.available_cpus("0::/\n", tmp_path, env={})[0] == 1
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert threads.available_cpus("0::/\n", tmp_path, env={"SLURM_CPUS_PER_TASK": "6"}) == (6, "SLURM_CPUS_PER_TASK")
    assert threads.available_cpus("0::/\n", tmp_path, env={}) == (64, "affinity")


def test_affinity_is_what_this_process_may_use():
    assert threads.affinity_cpus() == len(os.sched_getaffinity(0))


def test_plan_precedence_and_never_more_than_available():
    avail = (4, "affinity")
    assert threads.plan(None, env={}, available=avail) == threads.ThreadPlan(4, 4, "affinity")
    assert threads.plan("auto", env={"OMP_NUM_THREADS": "2"}, available=avail).threads == 2
    assert threads.plan(None, env={"CPBENCH_THREADS": "3", "OMP_NUM_THREADS": "2"}, available=avail).threads == 3
    assert threads.plan("1", env={"CPBENCH_THREADS": "3"}, available=avail) == threads.ThreadPlan(1, 4, "--threads")
    assert threads.plan(None, env={"CPBENCH_THREADS": "auto"}, available=avail).threads == 4
    for bad in ("0", "-2", "many"):
        with pytest.raises(UserError, match="--threads"):
            threads.plan(bad, env={}, available=avail)
    with pytest.raises(UserError, match=r"\$CPBENCH_THREADS"):
        threads.plan(None, env={"CPBENCH_THREADS": "x"}, available=avail)


def test_local_workers_share_the_cpus():
    p = threads.ThreadPlan(8, 8, "affinity")
    assert [threads.share(p, n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_data_loader_workers_run_one_thread_each():
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Threads(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.get_num_threads()

    torch_before = torch.get_num_threads()
    loader = DataLoader(Threads(), batch_size=2, num_workers=2, worker_init_fn=threads.loader_worker_init)
    assert torch.cat(list(loader)).tolist() == [1, 1, 1, 1]
    assert torch.get_num_threads() == torch_before


def test_the_cli_sets_passive_waiting_before_torch_loads(tmp_path):
    """OMP_WAIT_POLICY is read when torch's OpenMP runtime loads, so the CLI sets it first; a value
    the user chose is kept."""
    code = ("import os, sys; from cpbench.threads import prefer_passive_wait; prefer_passive_wait(); "
            "import torch; print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "ACTIVE"


def test_run_uses_and_reports_the_chosen_threads(tmp_path, monkeypatch, capsys):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from minidata import make_caltech

    from cpbench.cli import main

    make_caltech(tmp_path / "data")
    before = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["cpbench", "run", "zeroshot", "--backbone", "tiny", "--pretrained", "none",
                                      "--device", "cpu", "--shots", "2", "--seeds", "1", "--threads", "1",
                                      "--root", str(tmp_path / "data"), "--results", str(tmp_path / "res")])
    try:
        main()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "1 CPU thread(s) (from --threads" in capsys.readouterr().err


# ----------------------------------------------------------------------------- how threads wait (issue 29)
STAT = """cpu  {a} 0 {b} {c} 0 0 0 0 0 0
cpu0 {a} 0 {b} {c} 0 0 0 0 0 0
cpu1 100 0 100 {d} 0 0 0 0 0 0
intr 12345
"""


def test_idle_fraction_over_the_cpus_this_process_may_use():
    before = STAT.format(a=100, b=100, c=800, d=800)
    after = STAT.format(a=150, b=150, c=800, d=900)   # cpu0 busy for 100 jiffies, cpu1 idle for 100
    assert threads.idle_fraction(before, after, {0}) == 0.0
    assert threads.idle_fraction(before, after, {1}) == 1.0
    assert threads.idle_fraction(before, after, {0, 1}) == pytest.approx(0.5)
    assert threads.idle_fraction(before, after, None) == pytest.approx(0.5)
    assert threads.idle_fraction(before, before, {0}) is None     # no time passed
    assert threads.idle_fraction(before, after, {7}) is None       # a CPU /proc/stat does not list
    assert threads.idle_fraction("", after) is None


def test_measure_idle_reads_proc_stat_twice(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(a=1, b=1, c=1, d=1))
    assert threads.measure_idle(0.0, stat) is None                 # unchanged: not measurable
    assert threads.measure_idle(0.0, tmp_path / "absent") is None  # not Linux


@pytest.mark.parametrize("idle, available, n, env, expected", [
    (0.99, 2, 2, {}, "ACTIVE"),                  # idle: spinning pays (1.6x on the toy CoOp step)
    (0.90, 2, 2, {}, "ACTIVE"),                  # 0.2 CPUs of background activity
    (0.50, 2, 2, {}, "PASSIVE"),                 # one busy loop on two CPUs
    (0.97, 64, 64, {}, "PASSIVE"),               # 1.9 CPUs busy on a 64-CPU node: a thread would wait
    (0.997, 64, 64, {}, "ACTIVE"),               # 0.2 CPUs busy
    (0.60, 8, 2, {}, "ACTIVE"),                  # 4.8 free CPUs for 2 threads (--threads 2)
    (None, 2, 2, {}, "PASSIVE"),                 # load unknown: the safe choice
    (0.99, 2, 1, {}, "PASSIVE"),                 # one thread waits for nobody
    (0.99, 2, 4, {}, "PASSIVE"),                 # more threads than CPUs (--threads 4)
    (0.10, 2, 2, {"OMP_WAIT_POLICY": "active"}, "ACTIVE"),   # the user's choice stands
    (0.99, 2, 2, {"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE"),
])
def test_wait_policy_spins_only_when_every_thread_has_an_idle_cpu(idle, available, n, env, expected):
    p = threads.ThreadPlan(n, available, "affinity")
    policy, why = threads.wait_policy(p, idle, env)
    assert policy == expected, why
    if env:
        assert why == "$OMP_WAIT_POLICY"


def test_wait_policy_sleeps_when_the_run_does_not_train_here():
    p = threads.ThreadPlan(2, 2, "affinity")
    assert threads.wait_policy(p, 1.0, {}, here=False) == ("PASSIVE", "not training on this CPU")


def test_a_small_backbone_gets_one_thread_unless_asked():
    avail = (8, "affinity")
    assert threads.plan(None, env={}, available=avail, width=64).threads == 1        # tiny
    assert threads.plan(None, env={}, available=avail, width=128).threads == 8       # toy
    assert threads.plan(None, env={}, available=avail, width=None).threads == 8      # unknown: large
    assert threads.plan("4", env={}, available=avail, width=64).threads == 4
    assert threads.plan(None, env={"CPBENCH_THREADS": "2"}, available=avail, width=64).threads == 2
    assert threads.plan(None, env={"OMP_NUM_THREADS": "3"}, available=avail, width=64).threads == 3
    assert threads.plan(None, env={}, available=(1, "affinity"), width=64).source == "affinity"


def test_backbone_widths_come_from_configs_without_torch():
    from cpbench.models.families import widest_tower

    assert widest_tower("tiny") == 64 and widest_tower("toy") == 128
    assert widest_tower("ViT-B-16") == 768 and widest_tower("no-such-model") is None


def test_decide_sets_the_policy_before_torch_and_says_why():
    code = ("import os, sys; from cpbench import threads; "
            "p = threads.decide(None, None, here=True); "
            "assert 'torch' not in sys.modules; import torch; "
            "print(os.environ['OMP_WAIT_POLICY'], p.wait, '|', p.describe())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "CPBENCH_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    policy, wait, _, text = out.split(" ", 3)
    assert policy == wait and policy in ("ACTIVE", "PASSIVE"), out
    assert ("spinning waits (the CPUs were" if policy == "ACTIVE" else "sleeping waits (") in text, out
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "PASSIVE"},
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("PASSIVE PASSIVE |") and "sleeping waits ($OMP_WAIT_POLICY)" in out, out


def test_plan_describes_threads_and_waits():
    p = threads.ThreadPlan(1, 2, "small backbone, width 64", "PASSIVE", "one thread")
    assert p.describe() == ("1 CPU thread(s) (small backbone, width 64: more gain nothing; 2 CPU(s) available), "
                            "sleeping waits (one thread)")
