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
