"""Cross-dataset, DG and few-shot end to end through the CLI entry point on miniature data: a
miniature "source" (4 classes) stands in for ImageNet, a miniature target with other classes for
the cross-dataset targets, and a 2-class subset of the source (labels 0..1 over its own sorted
classes) for ImageNet-A/R, whose rows are gathered from the source's class bank."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cpbench.data import catalog
from cpbench.data import specs as specs_mod
from cpbench.results.store import ResultStore
from conftest import run_main
from minidata import make_caltech


def _spec(name, folder):
    return dataclasses.replace(specs_mod.CALTECH101, name=name, folder=folder, sources=())


@pytest.fixture
def world(tmp_path, monkeypatch):
    root = tmp_path / "data"
    real = catalog.all_specs
    extra = {"mini_source": _spec("mini_source", "src"), "mini_other": _spec("mini_other", "other"),
             "mini_a": _spec("mini_a", "a")}
    monkeypatch.setattr(catalog, "all_specs", lambda *a, **k: dict(sorted({**real(*a, **k), **extra}.items())))
    make_caltech(root)
    for folder, classes in (("src", ("accordion", "airplane", "anchor", "ant")),
                            ("other", ("bass", "beaver", "brain")), ("a", ("airplane", "ant"))):
        d = make_caltech(tmp_path / "tmp" / folder, n_train=2, n_test=2, classes=classes)
        d.rename(root / folder)
    return root, tmp_path / "results"


_cli = run_main


def _rows(results):
    return ResultStore(results).read().frame


# the miniature source has 2 training images per class: --shots 2 (more is refused, issue 17)
COMMON = ("--backbone", "tiny", "--pretrained", "none", "--set", "epochs=1", "--device", "cpu", "--seeds", "1",
          "--shots", "2")


def test_cross_dataset_and_dg_share_the_checkpoint_and_skip_reruns(world, monkeypatch):
    root, results = world
    args = ("run", "coop", *COMMON, "--root", root, "--results", results, "--source", "mini_source")
    assert _cli(monkeypatch, *args, "--protocol", "cross_dataset", "--datasets", "mini_other", "caltech101") == 0
    df = _rows(results)
    assert sorted(df.eval_dataset) == ["caltech101", "mini_other", "mini_source"]
    assert set(df.protocol) == {"cross_dataset"} and set(df.train_dataset) == {"mini_source"}
    assert set(df.subset) == {"all"} and set(df.shots) == {2}
    assert df.set_index("eval_dataset").loc["mini_other", "n_classes"] == 3
    ckpts = sorted((results / "checkpoints").iterdir())
    assert len(ckpts) == 1
    assert _cli(monkeypatch, *args, "--protocol", "dg", "--datasets", "mini_a") == 0
    df = _rows(results)
    dg = df[df.protocol == "dg"]
    assert sorted(dg.eval_dataset) == ["mini_a", "mini_source"]
    assert dg.set_index("eval_dataset").loc["mini_a", "n_classes"] == 2
    assert sorted((results / "checkpoints").iterdir()) == ckpts  # trained once, evaluated twice
    # the source row of dg equals cross_dataset's: the same checkpoint
    src = df[df.eval_dataset == "mini_source"].set_index("protocol")["accuracy"]
    assert src["dg"] == src["cross_dataset"]
    n = len(df)
    assert _cli(monkeypatch, *args, "--protocol", "dg", "--datasets", "mini_a") == 0
    assert len(_rows(results)) == n  # skipped
    before = set(_rows(results).run_id)
    assert _cli(monkeypatch, *args, "--protocol", "dg", "--datasets", "mini_a", "--force") == 0
    after = _rows(results)
    assert len(after) == n and set(after.run_id) != before  # the shard is rewritten in place


def test_dg_gathers_class_specific_rows(world, monkeypatch, capsys):
    """CoOp-CSC: a 2-class rebuild would be refused (its 4 contexts cannot move to 2 classes); the
    gather evaluates the source's 4-class bank and keeps the columns of airplane and ant."""
    root, results = world
    args = ("run", "coop", *COMMON, "--set", "csc=true", "--root", root, "--results", results,
            "--source", "mini_source", "--protocol", "dg", "--datasets", "mini_a")
    assert _cli(monkeypatch, *args) == 0
    df = _rows(results).set_index("eval_dataset")
    assert df.loc["mini_a", "n_classes"] == 2 and df.loc["mini_a", "n_test"] == 4
    # cross_dataset and base2new (prompts rebuilt from other names) cannot move CSC contexts: refused
    # before any training, also where the class counts happen to match (mini_source has 4 classes:
    # base and new 2 each, so a silent run would lend base class i's context to new class i)
    for protocol in ("cross_dataset", "base2new"):
        capsys.readouterr()
        code = _cli(monkeypatch, "run", "coop", *COMMON, "--set", "csc=true", "--root", root, "--results",
                    results / protocol, "--source", "mini_source", "--protocol", protocol, "--datasets", "mini_source")
        err = capsys.readouterr().err
        assert code == 2 and "class-specific context (csc) cannot run" in err and len(err.strip().splitlines()) == 1
        assert not (results / protocol).exists()


def test_gather_selects_source_columns_in_target_order():
    from cpbench.protocols.gather import GatherColumns, gather_columns

    class M:
        image_prompted = False

        def logits_from_features(self, f, ctx):
            return f @ torch.eye(4)

    cols = gather_columns(["a", "b", "c", "d"], ["b", "d"], "x")
    assert cols == [1, 3]
    g = GatherColumns(M(), cols)
    out = g.logits_from_features(torch.tensor([[0.0, 1, 2, 3]]), None)
    assert out.tolist() == [[1.0, 3.0]] and g.image_prompted is False
    from cpbench.errors import UserError
    with pytest.raises(UserError):
        gather_columns(["a", "b"], ["z"], "x")
    with pytest.raises(UserError, match="occur twice"):  # ImageNet has two "missile" and two "sunglasses"
        gather_columns(["a", "b", "a"], ["a"], "x")
    assert gather_columns(["a", "b", "a"], ["b"], "x") == [1]


def test_few_shot_per_shot_rows(world, monkeypatch):
    root, results = world
    assert _cli(monkeypatch, "run", "coop", *COMMON, "--root", root, "--results", results,
                "--protocol", "few_shot", "--shots", "1", "2", "--datasets", "mini_source") == 0
    df = _rows(results)
    assert sorted(df.shots) == [1, 2] and set(df.protocol) == {"few_shot"} and set(df.subset) == {"all"}
    assert set(df.n_classes) == {4}


def test_protocol_errors_are_one_line(world, monkeypatch, capsys):
    root, results = world
    code = _cli(monkeypatch, "run", "coop", *COMMON, "--root", root, "--results", results,
                "--protocol", "dg", "--shots", "1", "2", "--source", "mini_source", "--datasets", "mini_a")
    assert code == 2 and not results.exists()
    code = _cli(monkeypatch, "run", "coop", *COMMON, "--root", root, "--results", results, "--protocol", "nope")
    assert code == 2
    assert "unknown protocol" in capsys.readouterr().err


def test_per_shot_epochs_and_shared_training_config(tmp_path):
    """few_shot takes the YAML's shots.<k> epochs; dg and cross_dataset resolve one config, so
    their training keys (and checkpoints) coincide while their job keys (rows) differ."""
    from cpbench.protocols import cross_dataset, domain_generalization, few_shot
    from cpbench.protocols.jobs import RunSettings, job_config
    from cpbench.protocols.keys import job_key, training_key

    s = RunSettings(data_root=tmp_path, results_root=tmp_path)
    epochs = {j.shots: job_config(j, s).train.epochs
              for j in few_shot.plan("coop", ["caltech101"], [1], [1, 2, 4, 8, 16])}
    assert epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    (xd,) = cross_dataset.plan("coop", ["caltech101"], [1])
    (dg,) = domain_generalization.plan("coop", ["imagenet_a"], [1])
    cx, cg = job_config(xd, s), job_config(dg, s)
    assert cx.hash == cg.hash and cx.train.epochs == 50
    assert training_key(xd, cx, s) == training_key(dg, cg, s)
    assert job_key(xd, cx, s) != job_key(dg, cg, s)
    assert [t.gather for t in dg.targets] == [False, True] and not any(t.gather for t in xd.targets)


def test_dg_gather_with_lamm(world, monkeypatch):
    """LAMM's learned label embeddings are per class: DG evaluates it on the source bank (its
    learned rows kept) and scores the target's 2 classes. (The column selection itself is checked
    exactly in test_gather_selects_source_columns_in_target_order.)"""
    root, results = world
    assert _cli(monkeypatch, "run", "lamm", *COMMON, "--root", root, "--results", results,
                "--source", "mini_source", "--protocol", "dg", "--datasets", "mini_a") == 0
    df = _rows(results).set_index("eval_dataset")
    assert df.loc["mini_a", "n_classes"] == 2 and df.loc["mini_a", "n_test"] == 4
