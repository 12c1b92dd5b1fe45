"""Few-shot image-text retrieval: recall at K against a hand computation (ties included), CPL's
few-shot pair draw reproduced, Karpathy caption files read as CPL reads them, zero-shot and
CoOp-style retrieval end to end on the toy captioned dataset with its report, every method that
declares a retrieval mode, and the one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402
from test_protocols import _cli as _main  # noqa: E402

from cpbench.data import caption_splits, captions  # noqa: E402
from cpbench.data import prepare as prep  # noqa: E402
from cpbench.data.toy import captions as toy_captions  # noqa: E402
from cpbench.engine.retrieval import ranks, recall_at_k  # noqa: E402
from cpbench.methods.registry import METHODS, get_method_class  # noqa: E402
from cpbench.models.backbone import load_backbone  # noqa: E402
from cpbench.protocols import retrieval  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings  # noqa: E402
from cpbench.results import report as rep  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

# --------------------------------------------------------------------------- recall at K

# 3 images x 6 captions, captions 2i and 2i+1 belong to image i
SIM = torch.tensor([
    [0.9, 0.1, 0.9, 0.3, 0.2, 0.5],  # image 0: best match 0.9 ties with caption 2 (not its own) -> rank 2
    [0.5, 0.4, 0.2, 0.6, 0.7, 0.1],  # image 1: best match 0.6 (caption 3), caption 4 scores 0.7 -> rank 2
    [0.1, 0.2, 0.3, 0.4, 0.8, 0.5],  # image 2: best match 0.8 (caption 4), nothing above -> rank 1
])
CAPTION_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])
# text -> image, column by column (own image's score vs the others'):
#  c0 0.9 vs 0.5, 0.1 -> 1;  c1 0.1 vs 0.4, 0.2 -> 3;  c2 0.2 vs 0.9, 0.3 -> 3;
#  c3 0.6 vs 0.3, 0.4 -> 1;  c4 0.8 vs 0.2, 0.7 -> 1;  c5 0.5 vs 0.5 (tie), 0.1 -> 2
HAND_I2T, HAND_T2I = [2, 2, 1], [1, 3, 3, 1, 1, 2]


def test_recall_at_k_equals_the_hand_computation():
    pos = CAPTION_IMAGE.unsqueeze(0) == torch.arange(3).unsqueeze(1)
    assert ranks(SIM, pos).tolist() == HAND_I2T
    assert ranks(SIM.t(), pos.t()).tolist() == HAND_T2I
    got = recall_at_k(SIM, CAPTION_IMAGE, ks=(1, 2, 3), block=2)  # blocks smaller than the queries
    assert got == {("i2t", 1): (1, 3), ("i2t", 2): (3, 3), ("i2t", 3): (3, 3),
                   ("t2i", 1): (3, 6), ("t2i", 2): (4, 6), ("t2i", 3): (6, 6)}


def test_ties_count_against_the_query_whatever_the_order():
    flat = torch.zeros(3, 6)
    got = recall_at_k(flat, CAPTION_IMAGE, ks=(1, 4, 5))
    assert got[("i2t", 1)] == (0, 3) and got[("i2t", 4)] == (0, 3) and got[("i2t", 5)] == (3, 3)
    assert got[("t2i", 1)] == (0, 6) and got[("t2i", 5)] == (6, 6)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])  # candidates in another order: the same recalls
    assert recall_at_k(SIM[:, perm], CAPTION_IMAGE[perm], ks=(1, 2, 3)) == recall_at_k(SIM, CAPTION_IMAGE, ks=(1, 2, 3))


def test_captions_identical_after_cleaning_are_one_target():
    """CPL's cname2lab: one label per distinct caption. Image 0's "A dog runs." and image 1's
    "a dog  runs." are the same text once CLIP's tokenizer has cleaned them (case, spaces)."""
    from open_clip.tokenizer import SimpleTokenizer

    from cpbench.engine.retrieval import caption_targets

    tok = SimpleTokenizer()
    texts = ["A dog runs.", "a red ball", "a dog  runs.", "a cat"]
    caption_image = torch.tensor([0, 0, 1, 1])
    targets, of = caption_targets(texts, lambda t: tuple(tok.encode(t)))
    assert targets == ["A dog runs.", "a red ball", "a cat"] and of.tolist() == [0, 1, 0, 2]
    sim = torch.tensor([[0.9, 0.1, 0.2],      # image 0 x (dog, ball, cat)
                        [0.9, 0.3, 0.5]])     # image 1
    got = recall_at_k(sim, caption_image, ks=(1, 2), caption_target=of)
    # i2t: each image's best match is the shared "dog" target, which is its own: rank 1 for both
    # (as separate captions, the other image's identical "dog" caption tied with it: rank 2)
    assert got[("i2t", 1)] == (2, 2)
    as_captions = recall_at_k(sim[:, of], caption_image, ks=(1, 2))
    assert as_captions[("i2t", 1)] == (0, 2)
    # t2i per caption: "dog" matches both images (rank 1 twice), "ball" loses to image 1 (0.3 > 0.1)
    assert got[("t2i", 1)] == (3, 4) and got[("t2i", 2)] == (4, 4)


def test_long_captions_are_counted_against_the_room_the_prompt_leaves():
    from cpbench.engine.retrieval import long_captions

    n_tokens = lambda t: len(t.split())  # noqa: E731
    texts = ["a b c", "a b c d e f", "a b c d e f g h"]
    assert long_captions(texts, n_tokens, 10, 4) == 1      # room 6: only the 8-word caption is cut
    assert long_captions(texts, n_tokens, 10, 3) == 1
    assert long_captions(texts, n_tokens, 10, 5) == 2


# --------------------------------------------------------------------------- CPL's data handling


def _karpathy(n_pool: int, n_test: int, pool: str = "train", extra: int = 0) -> dict:
    images = []
    for part, n in (("restval", 2), (pool, n_pool), ("val" if pool == "train" else "train", 2), ("test", n_test)):
        for i in range(n):
            sents = [{"raw": f" {part} image {i} caption {j} " + "x" * (300 if j == 4 else 0)} for j in range(5 + extra)]
            images.append({"filepath": "val2014" if pool == "val" else "", "filename": f"{part}_{i}.jpg",
                           "split": part, "sentences": sents})
    return {"images": images, "dataset": "mini"}


def test_few_shot_pairs_are_cpl_split_py_draws(tmp_path):
    """The same images and captions as CPL's dataset_processing/flickr30k/split.py (pandas)."""
    data = _karpathy(40, 3)
    (tmp_path / "k.json").write_text(json.dumps(data))
    split = caption_splits.read_karpathy(tmp_path, "k.json", pool="train")
    for n, seed in ((7, 1), (12, 2), (40, 3)):
        random.seed(seed)  # the official script's order: seed, sample, then one randint per image
        df = pd.DataFrame({"images": data["images"]})
        df_train = df[df.images.str["split"] == "train"].sample(n=n, random_state=seed)
        names = df_train.images.str["filename"].tolist()
        caps = [df_train.images.str["sentences"].tolist()[i][random.randint(0, 4)]["raw"] for i in range(len(df_train))]
        assert caption_splits.sample_pairs(split, n, seed) == list(zip(names, caps))
    with pytest.raises(Exception, match="1 to 40"):
        caption_splits.sample_pairs(split, 41, 1)


def test_karpathy_files_are_read_as_cpl_reads_them(tmp_path):
    (tmp_path / "f.json").write_text(json.dumps(_karpathy(4, 3)))
    flickr = caption_splits.read_karpathy(tmp_path, "f.json", pool="train", test_chars=265)
    assert [p.path for p in flickr.train] == [f"train_{i}.jpg" for i in range(4)]
    assert [p.path for p in flickr.test] == [f"test_{i}.jpg" for i in range(3)]
    assert flickr.test[0].captions[0] == " test image 0 caption 0 "  # Flickr: raw, not stripped
    assert len(flickr.test[0].captions[4]) == 265 and len(flickr.train[0].captions[4]) > 265  # test cut at 265
    (tmp_path / "c.json").write_text(json.dumps(_karpathy(4, 3, pool="val", extra=2)))
    coco = caption_splits.read_karpathy(tmp_path, "c.json", pool="val", strip=True)
    assert [p.path for p in coco.train] == [f"val2014/val_{i}.jpg" for i in range(4)]  # the pool is Karpathy's val
    assert coco.test[1].captions == tuple(f"test image 1 caption {j}" + (" " + "x" * 300 if j == 4 else "") for j in range(5))
    assert len(coco.train[0].captions) == 7  # the pool keeps every caption; the draw uses the first five


# --------------------------------------------------------------------------- end to end on the toy world


@pytest.fixture
def toy_world(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_captions, "TOY_CAPTIONS", dataclasses.replace(toy_captions.TOY_CAPTIONS, n_train=12, n_test=20))
    root = tmp_path / "data"
    ds, info = prep.prepare("toy_captions", root, shots=[4], seeds=[1])
    assert (info["counts"]["train"], info["counts"]["test"], info["counts"]["captions"]) == (12, 20, 100)
    return root, tmp_path / "results"


@pytest.mark.slow
def test_zero_shot_and_coop_retrieval_end_to_end(toy_world, monkeypatch, capsys):
    root, results = toy_world
    common = ("--protocol", "retrieval", "--backbone", "toy", "--device", "cpu", "--seeds", "1", "--shots", "4",
              "--root", root, "--results", results, "--set", "epochs=2")
    assert _main(monkeypatch, "run", "zeroshot", *common) == 0  # no --dataset: every prepared captioned one
    assert _main(monkeypatch, "run", "coop", *common) == 0
    df = ResultStore(results).read().frame
    assert len(df) == 12 and set(df.eval_dataset) == {"toy_captions"} and set(df.protocol) == {"retrieval"}
    for (method, direction), g in df.groupby(["method", "subset"]):
        r = g.set_index("recall_at")["accuracy"]
        assert r[1] <= r[5] <= r[10], (method, direction)
        assert set(g.n_test) == {20 if direction == "i2t" else 100}
        assert set(g.n_classes) == {100 if direction == "i2t" else 20}
    zs = df[df.method == "zeroshot"].set_index(["subset", "recall_at"])["accuracy"]
    assert zs[("i2t", 1)] > 40 and zs[("t2i", 1)] > 20  # chance: 5 and 5 percent
    assert df[df.method == "coop"]["epochs"].iloc[0] == 2 and df[df.method == "coop"]["n_learnable"].iloc[0] > 0
    [table] = [t for t in rep.build(df).tables if t.protocol == "retrieval"]
    assert table.key == "toy_captions, 4 pairs" and [r.cells[0].method for r in table.rows] == ["zeroshot", "coop"]
    assert table.columns == ["i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10"]
    assert {r.cells[0].method: r.cells for r in table.rows}["zeroshot"][0].value == zs[("i2t", 1)]
    capsys.readouterr()
    assert _main(monkeypatch, "report", "--results", results, "--format", "csv") == 0
    out = capsys.readouterr().out
    assert "retrieval,\"toy_captions, 4 pairs\",coop,coop,toy,embedded,,,toy_captions,i2t R@1,4," in out
    n = len(df)
    assert _main(monkeypatch, "run", "coop", *common) == 0  # done: skipped
    assert len(ResultStore(results).read().frame) == n


RETRIEVAL_METHODS = sorted(n for n in METHODS if get_method_class(n).retrieval)


def test_retrieval_capable_methods_are_declared():
    assert {"zeroshot", "coop", "cocoop", "cpl"} <= set(RETRIEVAL_METHODS)
    assert not {"lamm", "coop_lamm", "maple_lamm", "linear_probe"} & set(RETRIEVAL_METHODS)


@pytest.mark.parametrize("name", RETRIEVAL_METHODS)
def test_every_retrieval_method_trains_and_scores(name, tmp_path, monkeypatch):
    monkeypatch.setattr(toy_captions, "TOY_CAPTIONS", dataclasses.replace(toy_captions.TOY_CAPTIONS, n_train=6, n_test=3))
    root = tmp_path / "data"
    prep.prepare("toy_captions", root)
    s = RunSettings(data_root=root, results_root=tmp_path / "results", backbone="tiny", pretrained="none",
                    sets=["epochs=1", "batch_size=2"])
    job = retrieval.plan(name, ["toy_captions"], [1], [3])[0]
    rows = run_job(job, load_backbone("tiny", "none"), s, ResultStore(s.results_root))
    assert [(r["subset"], r["recall_at"]) for r in rows] == [(d, k) for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert all(0 <= r["accuracy"] <= 100 for r in rows)
    assert {r["accuracy"] for r in rows if r["recall_at"] == 5 and r["subset"] == "t2i"} == {100.0}  # 3 images
    ckpts = list((s.results_root / "checkpoints").rglob("final.json"))
    assert len(ckpts) == (1 if get_method_class(name).trainable else 0)


@pytest.mark.parametrize("args, message", [
    (["lamm", "--protocol", "retrieval", "--dataset", "toy_captions"], "lamm has no image-text retrieval mode"),
    (["coop", "--protocol", "retrieval", "--dataset", "toy_captions", "--set", "csc=true"], "class-specific context"),
    (["coop", "--protocol", "retrieval", "--dataset", "caltech101"], "caltech101 is a classification dataset"),
    (["coop", "--dataset", "toy_captions"], "toy_captions is an image-caption dataset; run it with --protocol retrieval"),
])
def test_refusals_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(toy_captions, "TOY_CAPTIONS", dataclasses.replace(toy_captions.TOY_CAPTIONS, n_train=6, n_test=3))
    root = tmp_path / "data"
    prep.prepare("toy_captions", root)
    make_caltech(root)
    assert _main(monkeypatch, "run", *args, "--shots", "3", "--backbone", "tiny", "--pretrained", "none", "--root", root,
                 "--results", tmp_path / "results") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results").exists()


def test_too_many_pairs_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(toy_captions, "TOY_CAPTIONS", dataclasses.replace(toy_captions.TOY_CAPTIONS, n_train=6, n_test=3))
    root = tmp_path / "data"
    prep.prepare("toy_captions", root)
    assert _main(monkeypatch, "run", "zeroshot", "--protocol", "retrieval", "--shots", "7", "--backbone", "tiny",
                 "--pretrained", "none", "--root", root, "--results", tmp_path / "results", "--seeds", "1") == 2
    err = capsys.readouterr().err
    assert "number of training image-caption pairs: 1 to 6 for toy_captions, got 7" in err, err
    assert not (tmp_path / "results").exists()


def test_a_caption_longer_than_the_context_is_said_once(toy_world, monkeypatch, capsys):
    root, results = toy_world
    cache = next(root.glob(f"*/{captions.SPLIT_CACHE}"))
    split = json.loads(cache.read_text(encoding="utf-8"))
    split["test"][3][1][2] = " ".join(["word"] * 90)          # 90 tokens: more than a 77-token context holds
    cache.write_text(json.dumps(split), encoding="utf-8")
    capsys.readouterr()
    assert _main(monkeypatch, "run", "zeroshot", "--protocol", "retrieval", "--backbone", "toy", "--device", "cpu",
                 "--seeds", "1", "2", "--shots", "4", "--root", root, "--results", results) == 0
    err = capsys.readouterr().err
    assert err.count("test captions have more than") == 1 and "toy_captions: 1 of 100 test captions" in err
