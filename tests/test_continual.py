"""Continual (class-incremental) learning: tasks and class order, which methods can grow, the
acceptance test of LAMM's claim (a method whose old-class parameters are frozen after their task,
LAMM with its context frozen, leaves the old classes' logits exactly unchanged; CoOp's shared
context changes them), the metrics, the report, resume after a crash, and the one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from minidata import CLASSES, make_caltech  # noqa: E402
from test_protocols import _cli  # noqa: E402

from cpbench import faults  # noqa: E402
from cpbench.config import resolve  # noqa: E402
from cpbench.data import catalog  # noqa: E402
from cpbench.data import prepare as prep  # noqa: E402
from cpbench.data import images as image_lists  # noqa: E402
from cpbench.data.splits import base_new_labels  # noqa: E402
from cpbench.engine import checkpoint  # noqa: E402
from cpbench.errors import UserError  # noqa: E402
from cpbench.methods.registry import METHODS, get_method_class  # noqa: E402
from cpbench.protocols import continual  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings, job_config  # noqa: E402
from cpbench.protocols.keys import training_key  # noqa: E402
from cpbench.results import report as rep  # noqa: E402
from cpbench.results.continual import average_incremental, forgetting  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

SETS = ["epochs=3", "batch_size=2", "test_batch_size=4"]


# --------------------------------------------------------------------------- tasks


def test_two_tasks_in_label_order_are_base_then_new():
    for n in (4, 5, 10, 37, 101):
        tasks = continual.split_tasks(continual.class_order(n, "labels"), 2)
        base, new = base_new_labels([type("I", (), {"label": k})() for k in range(n)])
        assert tasks == [base, new]


def test_task_sizes_and_seeded_order():
    assert [len(t) for t in continual.split_tasks(list(range(10)), 3)] == [4, 3, 3]
    order = continual.class_order(20, continual.parse_order("1993"))
    assert sorted(order) == list(range(20)) and order != list(range(20))
    assert order == continual.class_order(20, "seed:1993")  # the same order for every run seed
    assert continual.class_order(20, "seed:7") != order
    with pytest.raises(UserError, match="--tasks"):
        continual.split_tasks(list(range(3)), 4)
    with pytest.raises(UserError, match="--class-order"):
        continual.parse_order("random")


def test_metrics_follow_their_definitions():
    # a[t, j]: after task t on task j; T = 3
    acc = {(1, 1): 80.0, (2, 1): 70.0, (2, 2): 90.0, (3, 1): 60.0, (3, 2): 85.0, (3, 3): 75.0}
    # f_1 = max(80, 70) - 60 = 20; f_2 = 90 - 85 = 5 -> (20 + 5) / 2
    assert forgetting(acc, 3) == pytest.approx(12.5)
    assert average_incremental([80.0, 76.0, 70.0]) == pytest.approx(75.333333, abs=1e-5)
    assert forgetting({(1, 1): 50.0, (2, 1): 55.0, (2, 2): 40.0}, 2) == -5.0  # backward transfer is negative


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize("name", sorted(METHODS))
def test_only_class_rows_depend_on_the_classes(name, tiny_backbone):
    """What carries over between tasks must not depend on the class count; what does is declared
    in class_rows (and grows along its axis); a method that cannot say so says so."""
    cls = get_method_class(name)
    options = resolve(name, cls.Options, "continual").options
    few, more = ["cat", "dog", "red car"], ["cat", "dog", "red car", "bird", "big blue house"]
    options = cls.options_for_classes(options, more, tiny_backbone)
    a = cls(tiny_backbone, few, options).learned_state()
    b = cls(tiny_backbone, more, options).learned_state()
    if cls.unsupported("continual", options):
        assert not cls.continual, name   # refused by its declaration (linear probe, the caches, CLIP-LoRA)
        return
    assert set(a) == set(b)
    for k in a:
        if k in cls.class_rows:
            axis = cls.class_rows[k]
            assert (a[k].shape[axis], b[k].shape[axis]) == (3, 5), k
            assert a[k].shape[:axis] + a[k].shape[axis + 1:] == b[k].shape[:axis] + b[k].shape[axis + 1:], k
        else:
            assert a[k].shape == b[k].shape, k


def test_csc_context_cannot_continue():
    from cpbench.methods.coop import CoOp

    msg = CoOp.unsupported("continual", CoOp.Options(csc=True))
    assert "class-specific context" in msg and "\n" not in msg
    assert CoOp.unsupported("continual", CoOp.Options()) == ""


# --------------------------------------------------------------------------- LAMM's claim


def _settings(tmp_path: Path) -> RunSettings:
    data = tmp_path / "data"
    if not (data / "caltech-101").exists():
        make_caltech(data)
    return RunSettings(data_root=data, results_root=tmp_path / "results", backbone="tiny", pretrained="none",
                       sets=list(SETS), feature_cache=False)


def _test_images(s: RunSettings, backbone) -> torch.Tensor:
    ds = prep.load("caltech101", s.data_root)
    images = image_lists.ImageList(ds.split.test, ds.image_root, image_lists.test_transform(backbone.preprocess))
    return torch.stack([images[i][0] for i in range(len(images))])


def _logits(cls, backbone, names, options, state, images, classes=None) -> torch.Tensor:
    """Logits over ``classes`` (default: ``names``) of the method built on ``names`` with ``state``."""
    m = cls(backbone, names, options)
    m.load_learned_state(state)
    if classes is not None:  # a subset of the classes it was built on
        m.set_training_subset(classes, [names.index(c) for c in classes])
    m.eval()
    with torch.no_grad():
        return m(images)


@pytest.mark.parametrize("name, frozen", [("lamm", True), ("coop", False), ("coop_lamm", False)])
def test_frozen_old_class_parameters_leave_old_logits_exactly_unchanged(name, frozen, tmp_path, tiny_backbone):
    """After task 2, the old classes' logits are bit-identical to those after task 1 for LAMM
    (context frozen, one label row per class, old rows frozen after their task), and different
    for CoOp and CoOp+LAMM, whose shared context keeps training."""
    s = _settings(tmp_path)
    job = continual.plan(name, ["caltech101"], [1], shots=4, tasks=2)[0]
    rows = run_job(job, tiny_backbone, s, ResultStore(s.results_root))
    assert len(rows) == 3 + 5  # task 1: task1, task1-own, seen; task 2: two per task + seen
    cfg = job_config(job, s)
    cls = get_method_class(name)
    root = s.results_root / "checkpoints" / training_key(job, cfg, s)
    s1 = checkpoint.load(root / "task-1", "final")[0]
    s2 = continual.grow(s1, checkpoint.load(root / "task-2", "final")[0], cls.class_rows)
    old, new = list(CLASSES[:2]), list(CLASSES[2:])
    options = cls.options_for_classes(cfg.options, list(CLASSES), tiny_backbone)
    images = _test_images(s, tiny_backbone)
    before = _logits(cls, tiny_backbone, old, options, s1, images)
    after = _logits(cls, tiny_backbone, old + new, options, s2, images)
    after_old_only = _logits(cls, tiny_backbone, old + new, options, s2, images, classes=old)
    if frozen:
        assert torch.equal(s2["token_classes"][:2], s1["token_classes"])  # old rows untouched
        assert not torch.equal(s2["token_classes"][2:], s2["fix_token"][2:])  # new rows were trained
        assert torch.equal(after_old_only, before)  # bit for bit
        # inside the 4-class problem the same numbers come out of a larger text batch: equal up to
        # float32 rounding of the batched kernels
        assert (after[:, :2] - before).abs().max() < 1e-5
    else:
        assert not torch.equal(s2["ctx"], s1["ctx"])
        assert (after_old_only - before).abs().max() > 1e-3
        assert (after[:, :2] - before).abs().max() > 1e-3
    own = {r["task"]: r["accuracy"] for r in rows if r["subset"] == "task1-own"}
    if frozen:
        assert own[1] == own[2]
    by = {(r["task"], r["subset"]): r for r in rows}
    assert by[(2, "task1")]["n_classes"] == 4 and by[(2, "task1-own")]["n_classes"] == 2
    assert by[(2, "seen")]["correct"] == by[(2, "task1")]["correct"] + by[(2, "task2")]["correct"]
    assert json.loads(by[(1, "seen")]["class_order"]) == list(CLASSES)


def test_rows_and_report_through_the_cli(tmp_path, monkeypatch, capsys):
    s = _settings(tmp_path)
    common = ["--protocol", "continual", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu", "--seeds", "1",
              "--shots", "4", "--dataset", "caltech101", "--root", str(s.data_root), "--results", str(s.results_root)]
    for method in ("lamm", "zeroshot"):
        assert _cli(monkeypatch, "run", method, *common, *sum((["--set", x] for x in SETS), [])) == 0
    # three tasks in a seeded order (zero-shot: no training)
    assert _cli(monkeypatch, "run", "zeroshot", *common, "--tasks", "3", "--class-order", "5") == 0
    df = ResultStore(s.results_root).read().frame
    three = df[df.n_tasks == 3]
    assert len(three) == 3 + 5 + 7
    order = json.loads(three.class_order.iloc[0])
    assert sorted(order) == sorted(CLASSES) and order != list(CLASSES)
    tables = [t for t in rep.build(df).tables if t.protocol == "continual"]
    assert [t.key for t in tables] == ["caltech101, 4-shot, 2 tasks", "caltech101, 4-shot, 3 tasks"]
    two = {r.cells[0].method: r.cells for r in tables[0].rows}
    assert tables[0].columns == ["after task 1", "final (task 2)", "avg. incremental", "forgetting",
                                 "forgetting within tasks"]
    assert two["lamm"][4].value == 0.0  # LAMM: nothing of task 1's own decision changed
    assert two["zeroshot"][4].value == 0.0
    seen = df[(df.method == "lamm") & (df.subset == "seen")].set_index("task")["accuracy"]
    assert two["lamm"][2].value == pytest.approx((seen[1] + seen[2]) / 2)
    capsys.readouterr()
    assert _cli(monkeypatch, "report", "--results", s.results_root, "--protocol", "continual") == 0
    text = capsys.readouterr().out
    assert "Continual (class-incremental) learning (caltech101, 4-shot, 2 tasks)" in text and "iCaRL" in text


@pytest.mark.parametrize("args, message", [
    (["linear_probe"], "linear_probe cannot learn classes task after task"),
    (["coop", "--set", "csc=true"], "class-specific context"),
    (["coop", "--tasks", "5"], "--tasks must be between 2 and the number of classes of caltech101"),
    (["coop", "--class-order", "shuffled"], "--class-order takes"),
    (["coop", "--shots", "1", "2"], "continual takes one --shots value"),
])
def test_refusals_are_one_line_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    s = _settings(tmp_path)
    assert _cli(monkeypatch, "run", *args, "--protocol", "continual", "--backbone", "tiny", "--pretrained", "none",
                "--shots", "4", "--dataset", "caltech101", "--root", s.data_root, "--results", s.results_root) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not s.results_root.exists()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_rows_and_state(tmp_path, tiny_backbone):
    """Killed inside task 1's training, inside task 2's training, while writing task 2's final
    checkpoint, during task 2's evaluations and while writing the shard: the re-run ends with the
    rows and learned state of an uninterrupted run."""
    clean = _settings(tmp_path / "clean")
    job = continual.plan("coop_lamm", ["caltech101"], [1], shots=4, tasks=2)[0]
    want = run_job(job, tiny_backbone, clean, ResultStore(clean.results_root))
    cols = ["task", "subset", "accuracy", "correct", "n_test"]
    root = lambda s: s.results_root / "checkpoints" / training_key(job, job_config(job, s), s)  # noqa: E731
    # fault points of this job (counted): 2-13 task 1 (4 batches + 2 checkpoint writes per epoch),
    # 18-25 its final and its evaluations, 26-45 task 2, 46-53 its evaluations, 54 the shard
    for at in (9, 28, 44, 50, 54):
        s = _settings(tmp_path / f"kill{at}")
        pid = os.fork()
        if pid == 0:  # child: crash at the at-th fault point (one thread: a forked OpenMP pool can hang)
            try:
                torch.set_num_threads(1)
                os.environ["CPBENCH_FAULT_AT"] = str(at)
                faults._passed[0] = 0
                run_job(job, tiny_backbone, s, ResultStore(s.results_root))
            finally:
                os._exit(0)
        deadline = time.time() + 300
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the child killed at fault point {at} did not finish in 300 s")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 173
        assert not ResultStore(s.results_root).read().frame.shape[0]
        got = run_job(job, tiny_backbone, s, ResultStore(s.results_root))
        assert [[r[c] for c in cols] for r in got] == [[r[c] for c in cols] for r in want]
        for t in (1, 2):
            a = checkpoint.load(root(s) / f"task-{t}", "final")[0]
            b = checkpoint.load(root(clean) / f"task-{t}", "final")[0]
            assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("name", ["continual", "toy_continual", "retrieval_flickr30k", "retrieval_mscoco",
                                  "toy_retrieval"])
def test_shipped_suites_of_the_new_protocols(name):
    from cpbench.runner import load_suite

    st = load_suite(Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.yaml")
    specs = catalog.all_specs()
    task = "retrieval" if st["protocol"] == "retrieval" else "classification"
    assert st["protocol"] in ("continual", "retrieval") and st["datasets"]
    assert all(specs[d].task == task for d in st["datasets"])
    for m in st["methods"]:
        cls = get_method_class(m)
        assert cls.unsupported(st["protocol"], resolve(m, cls.Options, st["protocol"]).options) == "", m


def test_continual_jobs_cross_process_boundaries_as_json():
    """Launchers (local workers, SLURM) carry jobs as JSON: the task count and order survive."""
    import json as _json

    from cpbench.launch import job_from_payload, job_payload

    job = continual.plan("lamm", ["caltech101"], [2], shots=4, tasks=3, class_order="seed:1993")[0]
    assert job_from_payload(_json.loads(_json.dumps(job_payload(job, {})))) == job
    assert "3 tasks (seed:1993)" in job.describe()
