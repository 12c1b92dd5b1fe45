"""Exit codes scripts can trust (issue 17): 0 all done, 1 a job failed after the others ran,
2 a user error, 130 Ctrl-C / 143 SIGTERM with one line saying what was saved and how to resume.

The interrupt tests send a real signal to a real ``python -m cpbench run`` process while it
trains, then re-run the same command and check that it resumed and finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_main  # noqa: E402
from minidata import make_caltech  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exits")
    make_caltech(root / "data", n_train=8)
    return root / "data"


def _run_args(data: Path, res: Path, *extra: str) -> list[str]:
    return ["run", "coop", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu", "--shots", "8",
            "--root", str(data), "--results", str(res), "--set", "batch_size=1", "test_batch_size=4", *extra]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "CPBENCH_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "cpbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _interrupt_after(proc: subprocess.Popen, needle: str, sig: int, timeout: float = 240) -> tuple[int, str]:
    """Read stderr line by line (plain log lines: stderr is a pipe) until ``needle``, then signal."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            proc.send_signal(sig)
            break
    rest_out, rest_err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest_err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_signal_during_training_exits_with_its_code_and_says_what_was_saved(sig, code, word, data, tmp_path):
    from cpbench.results.curves import read_curves
    from cpbench.results.store import ResultStore

    res = tmp_path / "res"
    args = _run_args(data, res, "--seeds", "1", "--set", "epochs=12")
    proc = _start(args)
    rc, err = _interrupt_after(proc, "epoch 2/12", sig)
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert rc == code, err
    assert last.startswith(word) and "0 of 1 job(s) finished" in last and "checkpointed" in last, last
    assert "re-run the same command to resume" in last and "Traceback" not in err, err
    assert ResultStore(res).read().frame.empty
    saved = int(last.split("has epoch ")[1].split("/")[0])
    assert 2 <= saved < 12
    if sig != signal.SIGINT:
        return
    # the same command resumes from that epoch and finishes: exit 0, one history row per epoch
    proc = _start(args)
    out, err2 = proc.communicate(timeout=600)
    assert proc.returncode == 0, err2
    assert f"epoch {saved}/12" not in err2 and f"epoch {saved + 1}/12" in err2  # it did not redo epochs
    curves = read_curves(res)
    assert list(curves["epoch"]) == list(range(1, 13))
    assert len(ResultStore(res).read().frame) == 2


def _main(monkeypatch, argv: list[str]) -> int:
    return run_main(monkeypatch, *argv)


def test_a_failed_job_exits_1_after_the_others_ran(data, tmp_path, monkeypatch, capsys):
    import cpbench.protocols.execute as ex
    from cpbench.results.store import ResultStore

    real = ex.run_job

    def flaky(job, *a, **k):
        if job.seed == 1:
            raise RuntimeError("simulated bug in job 1")
        return real(job, *a, **k)

    monkeypatch.setattr(ex, "run_job", flaky)
    code = _main(monkeypatch, ["run", "zeroshot", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu",
                               "--shots", "8", "--root", str(data), "--results", str(tmp_path / "res"),
                               "--seeds", "1", "2"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "simulated bug in job 1" in err and "Traceback" in err  # a bug keeps its traceback
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 job(s) failed")
    assert set(ResultStore(tmp_path / "res").read().frame["seed"]) == {2}  # job 2 ran after job 1 failed


def test_user_errors_in_several_jobs_exit_2_after_all_ran(data, tmp_path, monkeypatch, capsys):
    import cpbench.protocols.execute as ex
    from cpbench.errors import UserError

    ran = []

    def refuse(job, *a, **k):
        ran.append(job.seed)
        raise UserError(f"image missing for seed {job.seed}; fix it")

    monkeypatch.setattr(ex, "run_job", refuse)
    code = _main(monkeypatch, ["run", "zeroshot", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu",
                               "--shots", "8", "--root", str(data), "--results", str(tmp_path / "res"),
                               "--seeds", "1", "2"])
    err = capsys.readouterr().err
    assert code == 2 and ran == [1, 2], err
    assert err.strip().splitlines()[-1].startswith("error: 2 of 2 job(s) failed (first:")


def test_a_full_disk_stops_the_run_at_once(data, tmp_path, monkeypatch, capsys):
    import cpbench.protocols.execute as ex
    from cpbench.errors import StorageError

    ran = []

    def full(job, *a, **k):
        ran.append(job.seed)
        raise StorageError("no space left on the device while writing x; free some space")

    monkeypatch.setattr(ex, "run_job", full)
    code = _main(monkeypatch, ["run", "zeroshot", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu",
                               "--shots", "8", "--root", str(data), "--results", str(tmp_path / "res"),
                               "--seeds", "1", "2"])
    assert code == 2 and ran == [1]
    assert "no space left" in capsys.readouterr().err


@pytest.mark.parametrize("raised, code", [(KeyboardInterrupt, 130), (EOFError, 1)])
def test_typer_abort_paths_do_not_decide_the_exit_code(raised, code, monkeypatch, capsys, tmp_path):
    """A KeyboardInterrupt raised as such (not by our signal handler) still gives 130 and the line;
    an EOFError (which typer also turns into an abort) is a bug: traceback-worthy exit 1, not 130."""
    import cpbench.runner as runner

    def boom(*a, **k):
        raise raised()

    monkeypatch.setattr(runner, "execute", boom)
    try:
        got = _main(monkeypatch, ["run", "coop", "--root", str(tmp_path)])
    except EOFError:
        got = 1  # re-raised with its traceback: the interpreter exits 1
    err = capsys.readouterr().err
    assert got == code, err
    if code == 130:
        assert err.strip().splitlines()[-1].startswith("interrupted:")


def test_signal_handlers_are_restored_after_main(monkeypatch, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _main(monkeypatch, ["report", "--results", str(tmp_path)])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_interrupted_line_names_the_signal():
    from cpbench.errors import Interrupted

    assert Interrupted(signal.SIGINT, "3 of 4 job(s) finished and saved").line() == \
        "interrupted: 3 of 4 job(s) finished and saved; re-run the same command to resume"
    term = Interrupted(signal.SIGTERM)
    assert term.exit_code == 143 and term.line().startswith("terminated (SIGTERM): finished work is kept")


@pytest.mark.slow
def test_ctrl_c_stops_local_launcher_workers_too(data, tmp_path):
    """SIGINT to the launcher alone (as `kill -INT`, not a terminal's Ctrl-C to the whole group):
    it stops its workers, which keep their checkpoints, prints one line and exits 130."""
    res = tmp_path / "res"
    proc = _start(_run_args(data, res, "--seeds", "1", "--set", "epochs=200", "--launcher", "local", "--gpus", "cpu"))
    deadline = time.time() + 240
    while time.time() < deadline and not list(res.glob("checkpoints/*/epoch.json")):
        time.sleep(0.2)
    children = [c for task in Path(f"/proc/{proc.pid}/task").iterdir() for c in (task / "children").read_text().split()]
    assert children, "no worker process"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err
    assert lines[-1].startswith("interrupted: 0 of 1 job(s) finished and saved; the 1 running one(s) keep"), err
    assert not any(ln.startswith("worker") and "interrupted" in ln for ln in lines), err  # one line, not one per worker
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
