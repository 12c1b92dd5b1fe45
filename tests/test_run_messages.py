"""Every step a user would wonder about is said (issue 29): a resumed run says from which epoch; a
second run of the same job says whose lock it waits for; an unreadable predictions file is named;
a run without --dataset names the datasets it leaves out and why; epochs=0 on a method that learns
is refused in one line; continual's two evaluations per task are told apart; --help shows flags as
flags; a folder error names the environment variable that chose the folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cpbench.data import prepare as prep

RUN = ["--backbone", "toy", "--seeds", "1", "--device", "cpu"]
SMALL = ["--set", "batch_size=8", "test_batch_size=64"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msg") / "data"
    prep.prepare("toy_shapes", root)
    return root


def _run(*args, env=None):
    return [sys.executable, "-m", "cpbench", "run", *args], {**os.environ, "COLUMNS": "200", **(env or {})}


def test_a_resumed_run_says_from_which_epoch(root, tmp_path, cli, cli_here):
    res = tmp_path / "res"
    args = ["coop", "--dataset", "toy_shapes", "--shots", "2", *RUN, *SMALL, "--set", "epochs=4", "--root", str(root),
            "--results", str(res)]
    # killed (as by SIGKILL) in epoch 2: epoch 1's batches and checkpoint writes pass 6 fault points
    rc, out, err = cli("run", *args, env={"CPBENCH_FAULT_AT": "7"})
    assert rc == 173, err
    rc, out, err = cli_here("run", *args)
    assert rc == 0, err
    assert "resuming coop on toy_shapes from epoch 2/4: epoch 1 was checkpointed by an earlier run" in err
    assert "epoch 1/4" not in err and "epoch 2/4" in err
    for shard in (res / "shards").glob("*.parquet"):  # rows lost, training kept: only evaluated again
        shard.unlink()
    rc, out, err = cli_here("run", *args)
    assert rc == 0 and "finished training in an earlier run: its final checkpoint is loaded" in err, err
    assert "epoch 1/4" not in err


def test_a_second_run_of_the_same_job_says_whose_lock_it_waits_for(root, tmp_path):
    from cpbench import locks
    from cpbench.models.pretrained import default_pretrained
    from cpbench.protocols.jobs import job_config
    from cpbench.protocols.keys import training_key
    from cpbench.runner import RunRequest, validate

    res = tmp_path / "res"
    sets = ["batch_size=8", "test_batch_size=64", "epochs=1"]
    req = RunRequest(method="coop", datasets=["toy_shapes"], seeds=[1], shots=[2], backbone="toy",
                     pretrained=default_pretrained("toy"), sets=sets, root=root, results=res, device="cpu")
    settings, (job,), _, _ = validate(req)
    lock = res / "locks" / f"{training_key(job, job_config(job, settings), settings)}.lock"
    cmd, env = _run("coop", "--dataset", "toy_shapes", "--shots", "2", *RUN, "--set", *sets, "--root", str(root),
                    "--results", str(res))
    with locks.held(lock):  # as another run of the same job would
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if "waiting for" in line or "training" in line:
                    break
            assert f"waiting for another run of coop on toy_shapes seed 1 to finish (it holds {lock.name}: " \
                   f"pid {os.getpid()} on " in lines[-1], lines
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=300)  # the lock released, it runs the job
    assert proc.returncode == 0 and "2 new result row(s)" in out, err
    assert not lock.exists()


def test_a_run_without_dataset_leaves_out_a_small_one_and_says_why(root, tmp_path, cli_here):
    from test_datasets_custom import _folder

    from cpbench.data.custom import make_custom

    data = tmp_path / "data"
    import shutil

    shutil.copytree(root, data)
    spec = make_custom("small_one", data, _folder(tmp_path, n=5))
    prep.prepare("small_one", data, spec=spec)
    rc, out, err = cli_here("run", "coop", *RUN, *SMALL, "--set", "epochs=1", "--root", str(data),
                       "--results", str(tmp_path / "res"))
    assert rc == 0, err
    assert "skipped small_one (left out of a run without --dataset): --shots 16 is more than small_one has" in err
    assert "2 new result row(s)" in out  # toy_shapes ran
    rc, out, err = cli_here("run", "coop", *RUN, "--shots", "40", "--root", str(data), "--results", str(tmp_path / "r2"))
    assert rc == 2 and err.strip().startswith("error: no prepared dataset can take this run: --shots 40") and "small_one" in err


def test_epochs_zero_on_a_method_that_learns_is_refused_in_one_line(root, tmp_path, cli_here):
    rc, out, err = cli_here("run", "coop", "--dataset", "toy_shapes", *RUN, "--set", "epochs=0", "--root", str(root),
                       "--results", str(tmp_path / "res"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "coop learns its parameters" in err, err
    assert not (tmp_path / "res").exists()


def test_an_unreadable_predictions_file_is_named(root, tmp_path, cli_here):
    res = tmp_path / "res"
    rc, out, err = cli_here("run", "zeroshot", "--dataset", "toy_shapes", *RUN, "--root", str(root), "--results", str(res))
    assert rc == 0, err
    (pred,) = (res / "predictions").glob("*.parquet")
    pred.write_bytes(b"not parquet")
    rc, out, err = cli_here("report", "--ci", "--results", str(res))
    assert rc == 0, err
    assert f"skipped unreadable predictions file {pred}" in err and err.count(str(pred)) == 1


def test_continual_tells_its_two_evaluations_per_task_apart(root, tmp_path, cli_here):
    rc, out, err = cli_here("run", "coop", "--protocol", "continual", "--dataset", "toy_shapes", "--shots", "2", *RUN,
                       *SMALL, "--set", "epochs=1", "--root", str(root), "--results", str(tmp_path / "res"))
    assert rc == 0, err
    assert "evaluating task 1 after task 1 among all 10 seen classes" in err
    assert "evaluating task 1 after task 1 among its own 10 classes" in err
    assert "evaluating task 1 after task 2 among all 20 seen classes" in err


@pytest.mark.parametrize("command", ["prepare", "run", "report", "list"])
def test_help_shows_flags_as_flags(command, cli_here):
    rc, out, err = cli_here(command, "--help")
    assert rc == 0 and "<bool>" not in out, out
    flag = {"prepare": "--force", "run": "--dry-run", "report": "--no-std", "list": "--backbones"}[command]
    assert flag in out


def test_folder_errors_name_the_environment_variable(root, tmp_path, cli_here, monkeypatch):
    a_file = tmp_path / "f"
    a_file.write_text("")
    args = ["run", "coop", "--dataset", "toy_shapes", *RUN, "--root", str(root)]
    with monkeypatch.context() as m:
        m.setenv("CPBENCH_RESULTS", str(a_file))
        rc, _, err = cli_here(*args)
    assert rc == 2 and err.strip().startswith(f"error: $CPBENCH_RESULTS {a_file} is a file"), err
    with monkeypatch.context() as m:
        m.setenv("CPBENCH_CACHE", str(a_file / "x"))
        rc, _, err = cli_here(*args, "--results", str(tmp_path / "res"))
    assert rc == 2 and err.strip().startswith("error: $CPBENCH_CACHE") and "--no-cache" in err, err
    with monkeypatch.context() as m:
        m.setenv("CPBENCH_DATA", str(a_file))
        rc, _, err = cli_here("prepare", "toy_shapes")
    assert rc == 2 and err.strip().startswith(f"error: $CPBENCH_DATA {a_file} is a file"), err
    with monkeypatch.context() as m:
        m.setenv("CPBENCH_DATA", str(tmp_path / "empty"))
        rc, _, err = cli_here("run", "coop", *RUN)
    assert rc == 2 and "point $CPBENCH_DATA at your data root" in err, err
