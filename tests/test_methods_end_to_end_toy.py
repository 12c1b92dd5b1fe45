"""ProGrad, CLIP-Adapter, Tip-Adapter(-F) and CLIP-LoRA through the CLI on the toy world: each of prograd,
clip_adapter, tip_adapter, tip_adapter_f and clip_lora runs base-to-new (or refuses it in one line,
exit 2, before the backbone loads) and few-shot for one epoch (clip_lora: the iterations of one
epoch; tip_adapter trains nothing), and ``report --cost`` lists their learnable parameters and
training time next to CoOp's. A shrunken toy_shapes (4 train / 2 val / 4 test images per class)
keeps it to seconds."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import run_main

from cpbench.data import prepare as prep
from cpbench.data.toy import datasets as toy

FEW = {"prograd": ["epochs=1"], "clip_adapter": ["epochs=1"], "tip_adapter": [], "tip_adapter_f": ["epochs=1"],
       "clip_lora": ["iterations=2"],   # 40 images, batch 32, last batch kept: 2 iterations = 1 epoch
       "coop": ["epochs=1"]}
B2N = ("prograd", "clip_adapter", "coop")
REFUSE = {"tip_adapter": "cannot score classes it has no cache keys for", "tip_adapter_f": "no cache keys",
          "clip_lora": "runs --protocol few_shot only"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3toy")
    codes = {}
    with pytest.MonkeyPatch.context() as mp:
        small = dataclasses.replace(toy.TOY_DATASETS["toy_shapes"], n_train=4, n_val=2, n_test=4)
        mp.setitem(toy.TOY_DATASETS, "toy_shapes", small)
        prep.prepare("toy_shapes", root / "data", shots=[2], seeds=[1])
        common = ("--datasets", "toy_shapes", "--backbone", "toy", "--device", "cpu", "--seeds", "1",
                  "--root", str(root / "data"), "--results", str(root / "res"))
        for m in B2N:
            codes[(m, "base2new")] = run_main(mp, "run", m, "--protocol", "base2new", "--shots", "2", *common,
                                              "--set", *FEW[m])
        for m, sets in FEW.items():
            codes[(m, "few_shot")] = run_main(mp, "run", m, "--protocol", "few_shot", "--shots", "2", *common,
                                              *(("--set", *sets) if sets else ()))
    frame = pd.concat([pd.read_parquet(p) for p in (root / "res" / "shards").glob("*.parquet")])
    return root, codes, frame


def test_each_method_runs_few_shot_and_base_to_new_or_refuses(world, cli_here):
    root, codes, df = world
    assert all(code == 0 for code in codes.values()), codes
    few = df[df.protocol == "few_shot"].set_index("method")
    assert sorted(few.index) == sorted(FEW)
    assert (few["n_classes"] == 20).all() and (few["n_test"] == 80).all()
    assert ((few["accuracy"] >= 0) & (few["accuracy"] <= 100)).all()
    assert few.loc["clip_lora", "epochs"] == 1 and few.loc["tip_adapter", "epochs"] == 0
    assert few.loc["tip_adapter", "n_learnable"] == 0 and few.loc["tip_adapter_f", "n_learnable"] == 40 * 128
    b2n = df[df.protocol == "base2new"]
    assert sorted(set(b2n.method)) == sorted(B2N) and set(b2n.subset) == {"base", "new"}
    for m, line in REFUSE.items():
        code, _, err = cli_here("run", m, "--protocol", "base2new", "--shots", "2", "--datasets", "toy_shapes",
                                "--backbone", "toy",
                                "--root", root / "data", "--results", root / "res2")
        assert code == 2 and line in err and len(err.strip().splitlines()) == 1, err
        assert "loading backbone" not in err and not (root / "res2").exists()


def test_report_cost_lists_their_parameters_and_training_time(world, cli_here):
    import io

    root, _, df = world
    code, out, err = cli_here("report", "--results", root / "res", "--cost", "--format", "csv")
    assert code == 0, err
    cost = pd.read_csv(io.StringIO(out))
    few = cost[(cost["protocol"] == "few_shot") & (cost["kind"] == "cost")]
    got = {(r.method, r.field): r.mean for r in few.itertuples()}
    rows = df[df.protocol == "few_shot"].set_index("method")
    for m in FEW:
        assert got[(m, "learnable params")] == rows.loc[m, "n_learnable"], m
        assert got[(m, "train s / job")] == pytest.approx(rows.loc[m, "train_seconds"], abs=1e-4), m
        assert got[(m, "jobs")] == 1
    assert all(got[(m, "learnable params")] > 0 for m in FEW if m != "tip_adapter")
    assert all(got[(m, "train s / job")] > 0 for m in FEW)


def test_each_exports_and_loads_with_its_accuracy(world, cli_here):
    """``cpbench export`` writes each one's learned state (context, adapter, cache with its β/α,
    LoRA pairs) and ``cpbench.load`` scores the test split with the row's accuracy, to the image;
    the cache models refuse other classes in one line, the others take them."""
    import cpbench
    from cpbench.errors import UserError
    from cpbench.data.prepare import subset_items

    root, _, df = world
    ds = prep.load("toy_shapes", root / "data")
    items, _, _ = subset_items(ds, "all", 0, 1, "test")
    paths = [str(ds.image_root / it.path) for it in items]
    labels = [it.label for it in items]
    few = df[df.protocol == "few_shot"].set_index("method")
    for m in ("prograd", "clip_adapter", "tip_adapter", "tip_adapter_f", "clip_lora"):
        out = root / f"{m}.safetensors"
        code, _, err = cli_here("export", m, "--dataset", "toy_shapes", "--seed", "1", "--protocol", "few_shot",
                                "--out", out, "--root", root / "data", "--results", root / "res")
        assert code == 0 and f"wrote {out}" in err, err
        clf = cpbench.load(out, device="cpu")
        pred = clf.logits(paths).argmax(dim=1).tolist()
        assert sum(p == y for p, y in zip(pred, labels)) == few.loc[m, "correct"], m
        if m.startswith("tip_adapter"):
            with pytest.raises(UserError, match="cache model"):
                clf.with_classes(["circle", "star"])
        else:
            assert clf.with_classes(["circle", "star"]).logits(paths[:2]).shape == (2, 2)
