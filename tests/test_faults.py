"""Fault injection (issue 8): runs are killed at random, seeded points -- SIGKILL after a random
delay, or ``os._exit`` at the N-th training batch / evaluation batch / atomic write through the
``CPBENCH_FAULT_AT`` test hook (cpbench/faults.py) -- and then re-run until they finish. Every
trial must end with exactly the rows of an uninterrupted run (same accuracies, same learned
parameters bit for bit), no duplicated or lost rows, and no half-written shard ever readable.

The killed runs are forked children of the test process (the backbone is already loaded, so a
trial costs about one run, not a Python start-up); SIGKILL and ``os._exit`` skip every cleanup,
as a real crash does.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

from cpbench import faults  # noqa: E402
from cpbench.engine import checkpoint  # noqa: E402
from cpbench.protocols import base2new  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings, job_config  # noqa: E402
from cpbench.protocols.keys import training_key  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

TRIALS = 24
SETS = ["epochs=3", "batch_size=2", "test_batch_size=2"]
ROW_COLS = ["job_key", "method", "train_dataset", "eval_dataset", "subset", "seed", "accuracy", "correct",
            "n_test", "n_classes", "epochs"]


def _settings(data: Path, res: Path) -> RunSettings:
    return RunSettings(data_root=data, results_root=res, backbone="tiny", pretrained="none", sets=list(SETS),
                       feature_cache=False)


def _jobs():
    return base2new.plan("coop", ["caltech101"], [1, 2], 2)


def _run_all(backbone, s: RunSettings) -> None:
    store = ResultStore(s.results_root)
    for job in _jobs():
        run_job(job, backbone, s, store)


def _final_state(s: RunSettings) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for job in _jobs():
        tkey = training_key(job, job_config(job, s), s)
        got = checkpoint.load(s.results_root / "checkpoints" / tkey, "final")
        assert got is not None, f"no final checkpoint for {tkey}"
        out[tkey] = got[0]
    return out


def _rows(res: Path):
    read = ResultStore(res).read()
    assert not read.corrupt, f"a half-written shard was readable: {read.corrupt}"
    return read.frame[ROW_COLS].sort_values(["job_key", "subset"]).reset_index(drop=True)


def _fork_run(backbone, s: RunSettings, fault_at: int | None, kill_after: float | None) -> int:
    pid = os.fork()
    if pid == 0:  # child: run, crash where told, never return into pytest
        code = 0
        try:
            torch.set_num_threads(1)
            if fault_at is not None:
                os.environ["CPBENCH_FAULT_AT"] = str(fault_at)
                faults._passed[0] = 0
            _run_all(backbone, s)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    if kill_after is not None:
        deadline = time.time() + kill_after
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def one_thread():
    """Every run of this module (the forked children and the re-runs in this process) on one intra-op
    thread: bit-identical resumes are promised for the same thread count (a float reduction split
    over two threads rounds differently), and a forked OpenMP pool can hang the child."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone, one_thread):
    root = tmp_path_factory.mktemp("faults")
    make_caltech(root / "data")
    s = _settings(root / "data", root / "baseline")
    os.environ["CPBENCH_FAULT_AT"] = str(10**9)  # count the fault points of an uninterrupted run
    faults._passed[0] = 0
    try:
        _run_all(tiny_backbone, s)
    finally:
        del os.environ["CPBENCH_FAULT_AT"]
    n_points = faults._passed[0]
    faults._passed[0] = 0
    t0 = time.time()  # how long a (warm, forked) uninterrupted run takes: the range of kill delays
    assert _fork_run(tiny_backbone, _settings(root / "data", root / "timing"), None, None) == 0
    seconds = time.time() - t0
    return root, s, _rows(s.results_root), _final_state(s), n_points, seconds


def test_killed_runs_resume_to_identical_rows(world, tiny_backbone):
    root, base_s, base_rows, base_state, n_points, seconds = world
    assert len(base_rows) == 4 and n_points > 10
    rng = random.Random(8)
    kinds = {"hook": 0, "sigkill": 0}
    for trial in range(TRIALS):
        s = _settings(root / "data", root / f"trial{trial}")
        killed = 0
        for attempt in range(3):  # up to three crashes in a row, then a clean finish
            if attempt and rng.random() < 0.5:
                break
            if trial % 2 == 0:
                code = _fork_run(tiny_backbone, s, fault_at=rng.randint(1, n_points), kill_after=None)
                kinds["hook"] += code == faults.FAULT_EXIT
            else:
                code = _fork_run(tiny_backbone, s, fault_at=None, kill_after=rng.uniform(0.01, seconds))
                kinds["sigkill"] += code == -signal.SIGKILL
            assert code in (0, faults.FAULT_EXIT, -signal.SIGKILL), f"trial {trial}: child failed ({code})"
            killed += code != 0
            part = _rows(s.results_root)  # what a `cpbench report` would see right after the crash
            assert not part.duplicated(["job_key", "subset"]).any()
            assert set(part["job_key"]) <= set(base_rows["job_key"])
        _run_all(tiny_backbone, s)  # the re-run
        rows = _rows(s.results_root)
        assert rows.equals(base_rows), f"trial {trial} (killed {killed}x) differs:\n{rows}\n{base_rows}"
        state = _final_state(s)
        assert state.keys() == base_state.keys()
        for k in state:
            for name, t in state[k].items():
                assert torch.equal(t, base_state[k][name]), f"trial {trial}: {k}/{name} differs after resume"
    assert kinds["hook"] >= 8 and kinds["sigkill"] >= 3, kinds


def test_cli_run_sigkilled_mid_training_resumes(world):
    """The real thing once: `python -m cpbench run` SIGKILLed after its first epoch checkpoint,
    then the same command again; the rows equal the uninterrupted ones."""
    import subprocess

    root, base_s, base_rows, _, _, _ = world
    res = root / "cli"
    cmd = [sys.executable, "-m", "cpbench", "run", "coop", "--backbone", "tiny", "--pretrained", "none",
           "--device", "cpu", "--no-cache", "--shots", "2", "--seeds", "1", "2", "--set", *SETS,
           "--root", str(root / "data"), "--results", str(res)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list(res.glob("checkpoints/*/epoch.json")):
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.kill()
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert len(_rows(res)) < len(base_rows)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _rows(res).equals(base_rows)
