"""Launchers (issue 8): the local one-worker-per-GPU launcher with CPU workers standing in for
GPUs, the SLURM launcher through submitit's local executor, and --dry-run. Both launchers must
write exactly the rows a plain in-process run writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

from cpbench.launch import job_from_payload, job_payload, settings_payload  # noqa: E402
from cpbench.protocols import base2new  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

SETS = ["epochs=2", "batch_size=2", "test_batch_size=4"]
COLS = ["job_key", "eval_dataset", "subset", "seed", "accuracy", "correct", "n_test", "epochs"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("launch")
    make_caltech(root / "data")
    s = _settings(root, "plain")
    jobs = base2new.plan("coop", ["caltech101"], [1, 2, 3], 2)
    for job in jobs:
        run_job(job, tiny_backbone, s, ResultStore(s.results_root))
    return root, jobs, _rows(s.results_root)


def _settings(root: Path, name: str) -> RunSettings:
    return RunSettings(data_root=root / "data", results_root=root / name, backbone="tiny", pretrained="none",
                       sets=list(SETS))


def _rows(res: Path):
    read = ResultStore(res).read()
    assert not read.corrupt
    return read.frame[COLS].sort_values(["job_key", "subset"]).reset_index(drop=True)


def test_payload_is_json_and_round_trips(world):
    import json

    root, jobs, _ = world
    s = _settings(root, "x")
    p = json.loads(json.dumps(job_payload(jobs[0], settings_payload(s))))
    assert job_from_payload(p) == jobs[0]
    p["version"] = 99
    from cpbench.errors import UserError
    with pytest.raises(UserError, match="same cpbench version"):
        job_from_payload(p)


def test_local_launcher_cpu_workers_same_rows(world):
    from cpbench.launch.local import run_local

    root, jobs, plain = world
    s = _settings(root, "local")
    summary = run_local(jobs, {**settings_payload(s), "device": "cpu"}, ["0", "1"], say=lambda m: None)
    assert not summary.failed and len(summary.done) == 3 and summary.rows == 6
    seen = {a["visible_gpus"] for a in summary.answers}
    assert seen == {"0", "1"}, seen  # each worker saw only its own "GPU"
    assert len({a["pid"] for a in summary.answers}) == 2  # one process per GPU, reused across jobs
    assert _rows(s.results_root).equals(plain)
    again = run_local(jobs, {**settings_payload(s), "device": "cpu"}, ["0"], say=lambda m: None)
    assert len(again.skipped) == 3 and again.rows == 0 and _rows(s.results_root).equals(plain)


def test_local_launcher_reports_failed_jobs(world):
    from cpbench.launch.local import run_local

    root, jobs, _ = world
    s = _settings(root, "local-bad")
    bad = {**settings_payload(s), "device": "cpu", "data_root": str(root / "nowhere")}
    summary = run_local(jobs[:1], bad, ["cpu"], say=lambda m: None)
    assert len(summary.failed) == 1 and "cpbench prepare" in summary.failed[0][1]
    assert not (s.results_root / "shards").exists() or not list((s.results_root / "shards").iterdir())


def test_slurm_launcher_through_submitit_local_executor(world):
    pytest.importorskip("submitit")
    from cpbench.launch.slurm import SlurmOptions, submit_slurm

    root, jobs, plain = world
    s = _settings(root, "slurm")
    opts = SlurmOptions(partition="gpu", time_min=10, gpus_per_job=0, cpus_per_job=1, cluster="local")
    handles = submit_slurm(jobs, settings_payload(s), opts, s.results_root / "slurm", say=lambda m: None)
    assert len(handles) == 3
    for h in handles:
        h.result()  # raises if the task failed
    assert _rows(s.results_root).equals(plain)
    payloads = sorted((s.results_root / "slurm").glob("*/jobs/*.json"))
    assert len(payloads) == 3


def test_slurm_without_a_cluster_is_one_clear_error(world):
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun") or shutil.which("sbatch"):
        pytest.skip("a SLURM cluster is reachable here; this test must not submit to it")
    from cpbench.errors import UserError
    from cpbench.launch.slurm import SlurmOptions, submit_slurm

    root, jobs, _ = world
    s = _settings(root, "slurm-none")
    with pytest.raises(UserError, match="SLURM"):
        submit_slurm(jobs, settings_payload(s), SlurmOptions(), s.results_root / "slurm", say=lambda m: None)
    assert not (s.results_root / "slurm").exists() or not list((s.results_root / "slurm").iterdir())


def test_dry_run_lists_jobs_and_writes_nothing(world, capsys):
    from cpbench.runner import RunRequest, execute

    root, jobs, _ = world
    req = RunRequest(method="coop", datasets=["caltech101"], seeds=[1, 2, 3, 4], shots=[2], backbone="tiny",
                     pretrained="none", sets=list(SETS), device="cpu", results=root / "plain", root=root / "data",
                     launcher="local", gpus="0,1", dry_run=True)
    before = sorted(p.name for p in (root / "plain").rglob("*"))
    execute(req, Console(stderr=True), Console())
    text = capsys.readouterr().out
    assert text.count("done  coop-caltech101") == 3 and text.count("todo  coop-caltech101-s4") == 1
    assert "4 job(s), 1 to run" in text
    assert sorted(p.name for p in (root / "plain").rglob("*")) == before


# ---------------------------------------------------------------- several jobs per GPU (issue 21)
def test_worker_slots_repeat_each_gpu_interleaved():
    from cpbench.launch.local import worker_slots

    assert worker_slots(["0", "1"], 3) == ["0", "1", "0", "1", "0", "1"]
    assert worker_slots(["0"], 1) == ["0"]


def test_several_cpu_workers_on_one_gpu_share_it_and_write_the_same_rows(world):
    from cpbench.launch.local import run_local, worker_slots

    root, jobs, plain = world
    s = _settings(root, "per-gpu")
    summary = run_local(jobs, {**settings_payload(s), "device": "cpu"}, worker_slots(["0"], 2), say=lambda m: None,
                        headroom_gib=1.0)
    assert not summary.failed and summary.rows == 6
    assert {a["visible_gpus"] for a in summary.answers} == {"0"}          # both workers on "GPU 0"
    assert len({a["pid"] for a in summary.answers}) == 2                 # two processes at once
    assert len(summary.by_worker) == 2
    assert _rows(s.results_root).equals(plain)


def test_wait_for_headroom_waits_for_free_memory_then_gives_up():
    from cpbench.errors import UserError
    from cpbench.launch.worker import wait_for_headroom

    free = iter([1, 2, 5 << 30])
    slept = []
    wait_for_headroom(4 << 30, lambda: next(free), timeout_s=60, poll_s=5, sleep=slept.append)
    assert slept == [5, 5]
    with pytest.raises(UserError, match="lower --jobs-per-gpu"):
        wait_for_headroom(4 << 30, lambda: 1 << 30, timeout_s=10, poll_s=5, sleep=lambda s: None)


def test_out_of_gpu_memory_fails_the_job_not_the_worker(world, monkeypatch):
    import cpbench.protocols.execute as execute_mod
    from cpbench.launch.worker import Worker

    class OutOfMemoryError(RuntimeError):   # stands in for torch.OutOfMemoryError
        pass

    def oom(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(execute_mod, "run_job", oom)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    root, jobs, _ = world
    ans = Worker().run(job_payload(jobs[0], {**settings_payload(_settings(root, "oom")), "device": "cpu"}))
    assert not ans["ok"] and "lower --jobs-per-gpu" in ans["error"]


def test_jobs_per_gpu_below_one_is_a_user_error(world):
    from cpbench.errors import UserError
    from cpbench.runner import RunRequest, execute

    root, _, _ = world
    req = RunRequest(method="coop", datasets=["caltech101"], seeds=[1], shots=[2], backbone="tiny", pretrained="none",
                     sets=list(SETS), device="cpu", results=root / "plain", root=root / "data", launcher="local",
                     gpus="0", jobs_per_gpu=0)
    with pytest.raises(UserError, match="jobs-per-gpu"):
        execute(req, Console(stderr=True), Console())
