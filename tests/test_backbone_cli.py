"""Backbone families through ``cpbench run``: CoOp runs end to end on tiny EVA, SigLIP (its
tokenizer in the folder), CoCa and MobileCLIP models (``local-dir:``, a small toy_shapes);
methods a family cannot take are refused in one line before any model is built; a tokenizer that
is not in the local cache (or the package it needs) is one line, exit 2, before any job; a cached
one loads without the network."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import backbone_zoo as zoo
from cpbench.data import prepare as prep
from cpbench.data.toy import datasets as toy
from cpbench.errors import UserError
from cpbench.models import backbone as backbone_mod
from cpbench.models import families, tokenizers


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toybb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(toy.TOY_DATASETS, "toy_shapes",
                   dataclasses.replace(toy.TOY_DATASETS["toy_shapes"], n_train=4, n_val=2, n_test=4))
        prep.prepare("toy_shapes", root / "data", shots=[2], seeds=[1])
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return zoo.tokenizer_folders(tmp_path_factory.mktemp("tokenizers"))


def run_args(root, backbone: str, method: str = "coop") -> list[str]:
    return ["run", method, "--backbone", backbone, "--pretrained", "none", "--dataset", "toy_shapes",
            "--root", str(root / "data"), "--results", str(root / "results"), "--seeds", "1", "--shots", "2",
            "--set", "epochs=1", "batch_size=2", "--device", "cpu"]


def local_dir(root, family: str, folders: dict, hub_name: str | None = None, preprocess: dict | None = None):
    """A local-dir backbone folder: the family's tiny config, random weights, and (for a Hugging
    Face tokenizer) the tokenizer files, the config naming the hub tokenizer it stands in for."""
    folder = root / family.replace(" ", "_")
    folder.mkdir(parents=True)
    cfg = zoo.config(family, folders)
    src = cfg["text_cfg"].get("hf_tokenizer_name")
    if src:
        for f in tokenizers.TOKENIZER_FILES:
            (folder / f).write_bytes((zoo.Path(src) / f).read_bytes())
        cfg["text_cfg"]["hf_tokenizer_name"] = hub_name or src
    with zoo.small_timm(zoo.FAMILIES[family][1]):
        model = backbone_mod.build_model(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess or {}}))
    return folder


@pytest.mark.parametrize("family", ["EVA", "SigLIP", "CoCa", "MobileCLIP"])
def test_coop_runs_end_to_end_on_each_family(small_toy, folders, family, cli_here, tmp_path):
    pre = {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"} if family == "SigLIP" else None
    folder = local_dir(tmp_path, family, folders, "timm/ViT-B-16-SigLIP" if family == "SigLIP" else None, pre)
    with zoo.small_timm(zoo.FAMILIES[family][1]):   # the folder's weights are the small trunk's
        code, out, err = cli_here(*run_args(small_toy, f"local-dir:{folder}"))
    assert code == 0, (out, err)
    assert "Traceback" not in out + err
    from cpbench.results.store import ResultStore

    df = ResultStore(small_toy / "results").read().frame
    mine = df[df["backbone"] == f"local-dir:{folder}"]
    assert sorted(mine["subset"]) == ["base", "new"] and mine["accuracy"].between(0, 100).all()


@pytest.mark.parametrize("method,name,words", [("maple", "RN50", "ModifiedResNet"),
                                               ("maple", "convnext_tiny", "ConvNeXt"),
                                               ("ivlp", "MobileCLIP-S1", "FastViT"),
                                               ("coop", "xlm-roberta-base-ViT-B-32", "Hugging Face")])
def test_methods_a_family_cannot_take_are_refused_before_loading(small_toy, cli_here, monkeypatch, method, name,
                                                                  words):
    def boom(*a, **k):
        raise AssertionError("a backbone was built")

    monkeypatch.setattr(backbone_mod, "load_backbone", boom)
    monkeypatch.setattr(backbone_mod, "build_model", boom)
    code, out, err = cli_here(*run_args(small_toy, name, method))
    assert code == 2, (out, err)
    assert words in err and "Traceback" not in err + out and err.strip().count("\n") == 0, err


def _fake_hub_cache(cache, repo: str, source) -> None:
    """The Hugging Face hub cache layout, as `hf download` leaves it, holding ``source``'s
    tokenizer files and a timm model config (timm's repos have one; AutoTokenizer reads it)."""
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in tokenizers.TOKENIZER_FILES:
        (snap / f).write_bytes((source / f).read_bytes())
    (snap / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_siglip_224", "num_classes": 0}))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_an_uncached_tokenizer_is_one_line_before_any_job(small_toy, cli_here, offline_hub, monkeypatch):
    monkeypatch.setattr(backbone_mod, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    code, out, err = cli_here(*run_args(small_toy, "ViT-B-16-SigLIP"))
    assert code == 2 and "Traceback" not in out + err and err.strip().count("\n") == 0, (out, err)
    assert "timm/ViT-B-16-SigLIP" in err and "hf download timm/ViT-B-16-SigLIP" in err and "HF_HUB_OFFLINE" in err
    assert "job" not in out


def test_a_cached_tokenizer_loads_offline_and_is_the_models_own(folders, offline_hub):
    from open_clip.tokenizer import HFTokenizer

    name = "ViT-B-16-SigLIP"
    cfg = families.model_config(name)
    _fake_hub_cache(offline_hub, "timm/ViT-B-16-SigLIP", zoo.Path(folders["t5"]))
    assert tokenizers.check(name, cfg) == {"timm/ViT-B-16-SigLIP": "cache"}
    tok = tokenizers.load(name, cfg)
    ref = HFTokenizer(folders["t5"], context_length=64, clean="canonicalize")   # open_clip's own, from the files
    texts = ["A photo of a Dog.", "x x x x red circle"]
    assert torch.equal(tok(texts), ref(texts)) and tok.context_length == 64 and tok.start == 0


def test_a_missing_transformers_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(tokenizers.importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    with pytest.raises(UserError, match=r"pip install 'cpbench\[hf\]'"):
        tokenizers.check("ViT-B-16-SigLIP", families.model_config("ViT-B-16-SigLIP"))
