"""Resume and concurrency (issue 8), deterministic and in-process:

- a training interrupted after any epoch and resumed ends with the same parameters, the same
  optimiser momentum and the same rows as an uninterrupted one (and the momentum matters: a
  resume that forgot it would differ, so this test can fail);
- ``train_seconds`` adds up the time trained before and after the interruption;
- a crash between the last epoch checkpoint and the final one, or during evaluation, re-runs
  only what is missing;
- a test-time-stochastic method (coopvpt) scores the same whether it trained in this process
  or loaded its final checkpoint;
- two processes running the same jobs on one results directory at once write each row once;
- a corrupt shard or a leftover temp file never breaks reading; `cpbench report` names it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from crashing import Crash, crash_after_epoch  # noqa: E402
from minidata import make_caltech  # noqa: E402

from cpbench.engine import checkpoint  # noqa: E402
from cpbench.protocols import base2new  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings, job_config  # noqa: E402
from cpbench.protocols.keys import training_key  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

SETS = ["epochs=3", "batch_size=2", "test_batch_size=4"]
COLS = ["job_key", "subset", "accuracy", "correct", "n_test", "epochs"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_caltech(root / "data")
    return root / "data"


def _s(data: Path, res: Path, sets=SETS, method="coop") -> RunSettings:
    return RunSettings(data_root=data, results_root=res, backbone="tiny", pretrained="none", sets=list(sets),
                       feature_cache=False)


def _job(method="coop", seed=1):
    return base2new.plan(method, ["caltech101"], [seed], 2)[0]


def _ckpt(s: RunSettings, job, tag: str):
    return checkpoint.load(s.results_root / "checkpoints" / training_key(job, job_config(job, s), s), tag)


def _rows(s: RunSettings):
    read = ResultStore(s.results_root).read()
    assert not read.corrupt
    return read.frame[COLS].sort_values(["job_key", "subset"]).reset_index(drop=True)




@pytest.fixture(scope="module")
def baseline(data, tiny_backbone, tmp_path_factory):
    s = _s(data, tmp_path_factory.mktemp("base"))
    run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    return s, _rows(s), _ckpt(s, _job(), "final")[0], _ckpt(s, _job(), "epoch")[0]


@pytest.mark.parametrize("crash_epoch", [0, 1, 2])
def test_resume_after_any_epoch_is_bitwise_identical(crash_epoch, data, tiny_backbone, baseline, tmp_path, monkeypatch):
    base_s, base_rows, base_final, base_epoch = baseline
    s = _s(data, tmp_path / "res")
    with monkeypatch.context() as m:
        crash_after_epoch(m, crash_epoch)
        with pytest.raises(Crash):
            run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    assert not ResultStore(s.results_root).has(_rows(base_s)["job_key"][0])
    before = _ckpt(s, _job(), "epoch")[1]["train_seconds"]
    assert before > 0
    rows = run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    assert _rows(s).equals(base_rows)
    final, meta = _ckpt(s, _job(), "final")
    assert meta["train_seconds"] >= before and rows[0]["train_seconds"] == meta["train_seconds"]
    for k, t in base_final.items():
        assert torch.equal(final[k], t), k
    epoch_state = _ckpt(s, _job(), "epoch")[0]  # the last epoch checkpoint holds the momentum buffers
    assert any(k.startswith("__optim__.") for k in epoch_state)
    for k, t in base_epoch.items():
        assert torch.equal(epoch_state[k], t), k
    # the per-epoch history (checkpointed with each epoch) ends the same; only the timings differ
    from cpbench.results.curves import read_curves

    ours, theirs = read_curves(s.results_root), read_curves(base_s.results_root)
    assert list(ours["epoch"]) == [1, 2, 3]
    assert ours.drop(columns="seconds").equals(theirs.drop(columns="seconds"))


def test_a_resume_without_momentum_would_differ(data, tiny_backbone, baseline, tmp_path, monkeypatch):
    """The comparison above is sensitive: drop the momentum buffers on resume and it fails."""
    import cpbench.engine.train as tr

    _, _, base_final, _ = baseline
    s = _s(data, tmp_path / "res")
    with monkeypatch.context() as m:
        crash_after_epoch(m, 0)
        with pytest.raises(Crash):
            run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    monkeypatch.setattr(tr, "_load_optimizer_state", lambda *a: None)
    run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    final = _ckpt(s, _job(), "final")[0]
    assert any(not torch.equal(final[k], t) for k, t in base_final.items())


def test_crash_before_final_checkpoint_or_during_eval(data, tiny_backbone, baseline, tmp_path, monkeypatch):
    base_s, base_rows, base_final, _ = baseline
    import cpbench.protocols.execute as jobs_mod

    s = _s(data, tmp_path / "res")
    calls = {"n": 0}
    real_eval = jobs_mod.evaluate

    def dying_eval(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second evaluation (new classes) dies
            raise Crash()
        return real_eval(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(jobs_mod, "evaluate", dying_eval)
        with pytest.raises(Crash):
            run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    assert _rows(s).empty  # rows of a job are written together, never a partial job
    ckdir = s.results_root / "checkpoints" / training_key(_job(), job_config(_job(), s), s)
    (ckdir / "final.json").unlink()  # and pretend it also died before the final checkpoint
    import cpbench.engine.train as tr
    with monkeypatch.context() as m:  # no training epoch may run again: the last epoch is on disk
        m.setattr(tr.Method, "forward_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
        run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    assert _rows(s).equals(base_rows)
    final = _ckpt(s, _job(), "final")[0]
    for k, t in base_final.items():
        assert torch.equal(final[k], t), k


def test_evaluation_rng_does_not_depend_on_what_ran_before(data, tiny_backbone, tmp_path, monkeypatch):
    """Methods that sample at test time (coopvpt) must score the same whether they trained in this
    process, resumed, or loaded their final checkpoint: each evaluation starts from the same RNG state."""
    import cpbench.protocols.execute as jobs_mod

    seen = []
    real_eval = jobs_mod.evaluate

    def recording_eval(*a, **k):
        seen.append(torch.random.get_rng_state().clone())
        return real_eval(*a, **k)

    monkeypatch.setattr(jobs_mod, "evaluate", recording_eval)
    sets = ["epochs=1", "batch_size=2", "test_batch_size=4"]
    s = _s(data, tmp_path / "res", sets)
    job = _job("coopvpt")
    first = run_job(job, tiny_backbone, s, ResultStore(s.results_root))  # trains, then evaluates
    torch.manual_seed(12345)
    torch.rand(1000)  # disturb the global RNG as other work in the same process would
    ResultStore(s.results_root).shard_path(first[0]["job_key"]).unlink()
    second = run_job(job, tiny_backbone, s, ResultStore(s.results_root))  # loads the final checkpoint
    assert len(seen) == 4
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])
    assert [r["correct"] for r in first] == [r["correct"] for r in second]


def test_two_processes_same_jobs_one_results_dir(data, tiny_backbone, baseline, tmp_path):
    base_s, base_rows, _, _ = baseline
    s = _s(data, tmp_path / "res")
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                torch.set_num_threads(1)
                got = run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
                code = 10 if got else 11  # 10: ran it, 11: found it done
            finally:
                os._exit(code)
        pids.append(pid)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [10, 11], codes  # exactly one process trained and wrote; the other waited, then skipped
    assert _rows(s).equals(base_rows)


def test_corrupt_shard_and_temp_files_are_named_and_skipped(data, tiny_backbone, baseline, tmp_path, capsys):
    from cpbench.cli import main

    base_s, base_rows, _, _ = baseline
    s = _s(data, tmp_path / "res")
    run_job(_job(), tiny_backbone, s, ResultStore(s.results_root))
    shards = s.results_root / "shards"
    (shards / "coop-caltech101-s9-broken.parquet").write_bytes(b"PAR1 not really")
    (shards / ".coop-caltech101-s9-half.parquet.abc123.tmp").write_bytes(b"PAR1 half")  # a killed writer's temp
    read = ResultStore(s.results_root).read()
    assert [p.name for p in read.corrupt] == ["coop-caltech101-s9-broken.parquet"]
    assert len(read.frame) == len(base_rows)
    argv = sys.argv
    sys.argv = ["cpbench", "report", "--results", str(s.results_root)]
    try:
        main()
    finally:
        sys.argv = argv
    cap = capsys.readouterr()
    assert "coop-caltech101-s9-broken.parquet" in cap.err and "| caltech101 |" in cap.out


def test_loss_scaler_state_round_trips():
    """fp16 training (GPU) keeps a dynamic loss scale; a resume must continue with the same one."""
    from cpbench.engine.train import _load_scaler_state, _scaler_state

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    a = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for _ in range(3):  # grows the scale once and leaves the growth tracker at 1
        opt.zero_grad()
        a.scale((p * 2).sum()).backward()
        a.step(opt)
        a.update()
    saved = _scaler_state(a)
    assert saved and float(saved["__scaler__.scale"][0]) == a.get_scale() == 2.0**11
    b = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    _load_scaler_state(b, saved)
    assert b.get_scale() == a.get_scale() and b.state_dict()["_growth_tracker"] == a.state_dict()["_growth_tracker"] == 1
    assert _scaler_state(None) == {}


def test_promptsrc_gpa_buffers_resume_bitwise(data, tiny_backbone, tmp_path, monkeypatch):
    """PromptSRC's Gaussian prompt aggregation keeps running sums across epochs (persistent
    buffers): a resume mid-training must end with the same aggregated prompts."""
    pytest.importorskip("cpbench.methods.promptsrc")
    sets = ["epochs=3", "batch_size=2", "test_batch_size=4"]
    job = _job("promptsrc")
    a = _s(data, tmp_path / "a", sets)
    first = run_job(job, tiny_backbone, a, ResultStore(a.results_root))
    b = _s(data, tmp_path / "b", sets)
    with monkeypatch.context() as m:
        crash_after_epoch(m, 1)
        with pytest.raises(Crash):
            run_job(job, tiny_backbone, b, ResultStore(b.results_root))
    second = run_job(job, tiny_backbone, b, ResultStore(b.results_root))
    assert [r["correct"] for r in first] == [r["correct"] for r in second]
    fa, fb = _ckpt(a, job, "final")[0], _ckpt(b, job, "final")[0]
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
