"""The embedded toy world: generator, datasets, split files and the shipped tiny CLIP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from cpbench.data.toy import datasets as toy
from cpbench.data.toy import world

TOY_MODEL_DIR = Path(toy.__file__).resolve().parents[2] / "models" / "toy"


def _scenes(seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    holdout = toy.pretraining_holdout()
    out = []
    for _ in range(n):
        scene = world.sample_pretraining_scene(rng, holdout)
        out.append((world.render(scene), world.caption(scene, rng)))
    return out


def test_generator_is_deterministic_by_seed():
    a, b, c = _scenes(3), _scenes(3), _scenes(4)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    assert [x[1] for x in a] != [x[1] for x in c]
    img = a[0][0]
    assert img.shape == (world.IMAGE_SIZE, world.IMAGE_SIZE, 3) and img.dtype == np.uint8


def test_world_size_and_captions():
    assert len(world.SHAPES) >= 12 and len(world.COLOURS) >= 10 and len(world.PATTERNS) >= 4
    caps = [c for _, c in _scenes(0, 300)]
    assert len(set(caps)) > 250  # varied
    assert any(" and " in c for c in caps)  # two-object scenes
    assert any("background" in c for c in caps)
    tokenizer = open_clip.tokenizer.SimpleTokenizer()  # built once: it reads the whole BPE vocabulary
    for c in caps:
        assert len(tokenizer.encode(c)) <= 30, c  # fits context 32


def test_pretraining_never_shows_held_out_combinations():
    holdout = toy.pretraining_holdout()
    assert len(holdout.colour_shape) == 34 and len(holdout.shape_pairs) == 24 and len(holdout.pattern_shape) == 9
    rng = np.random.default_rng(0)
    for _ in range(3000):
        s = world.sample_pretraining_scene(rng, holdout)
        assert holdout.allows(s)
        for o in s.objects:
            assert (o.colour, o.shape) not in holdout.colour_shape
            assert (o.pattern, o.shape) not in holdout.pattern_shape


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_dataset_definition(name):
    ds = toy.TOY_DATASETS[name]
    assert name.startswith("toy_") and ds.name == name and ds.folder == name
    assert ds.dassl_name[0].isupper() and " " not in ds.dassl_name and "{}" in ds.template
    assert len(ds.classnames) >= 20 and len(set(ds.classnames)) == len(ds.classnames)
    assert len(ds.class_scenes) == len(ds.classnames)
    assert ds.n_train >= 16 and ds.n_val >= 4 and ds.n_test >= 20
    assert ds.n_base == (len(ds.classnames) + 1) // 2
    # base-to-new is compositional: every word of a new class name occurs in some base class name
    base_words = {w for c in ds.classnames[:ds.n_base] for w in c.split()}
    new = ds.classnames[ds.n_base:]
    if " " in new[0]:
        assert all(set(c.split()) <= base_words for c in new)
    # every image really shows its class
    rng = np.random.default_rng(0)
    for label, kwargs in enumerate(ds.class_scenes):
        scene = ds.scene(label, rng)
        kw = dict(kwargs)
        if "shapes" in kw:
            assert sorted(o.shape for o in scene.objects) == sorted(kw["shapes"])
        else:
            (o,) = scene.objects
            assert all(getattr(o, k) == v for k, v in kw.items())
        # ... in the dataset's domain
        for k, v in ds.domain:
            assert scene.background == v if k == "background" else all(getattr(o, k) == v for o in scene.objects)


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_dataset_domain_is_unnamed_and_partly_unseen(name):
    """Each dataset has a domain (an attribute value all its images share) that neither the class
    names nor the zero-shot template name, and pretraining never shows it with some of the
    dataset's shapes: the default prompt meets an unseen composition, which naming the domain
    (or a learned context) can repair."""
    ds = toy.TOY_DATASETS[name]
    ((attr, value),) = [(k, v) for k, v in ds.domain if k in ("colour", "pattern")]
    assert {k for k, _ in ds.domain} <= {"colour", "pattern", "size", "background"}
    for _, v in ds.domain:
        assert all(v not in c.split() for c in ds.classnames) and v not in ds.template and v in ds.domain_template
    assert "{}" in ds.domain_template and value in ds.domain_template.split("{}")[0]
    held = toy.pretraining_holdout()
    held_pairs = held.colour_shape if attr == "colour" else held.pattern_shape
    shapes = {w for c in ds.classnames for w in c.replace(" and ", " ").split() if w in world.SHAPES}
    unseen = {s for s in shapes if (value, s) in held_pairs}
    assert 0 < len(unseen) and len(unseen) <= len(shapes)
    # but the domain's word is grounded: pretraining shows it with other shapes
    assert any((value, s) not in held_pairs for s in world.SHAPES)


def test_sample_scene_fixes_size_and_pair_attributes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        (o,) = world.sample_scene(rng, shape="star", size="large").objects
        assert o.size == "large" and world.SIZES["large"][0] <= o.radius <= world.SIZES["large"][1]
        pair = world.sample_scene(rng, shapes=("circle", "heart"), colour="green", pattern="dotted")
        assert [(o.colour, o.pattern) for o in pair.objects] == [("green", "dotted")] * 2
        assert world.BACKGROUNDS and world._contrasts("green", pair.background)


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_build_writes_coop_split(name, tmp_path, monkeypatch):
    small = dataclasses.replace(toy.TOY_DATASETS[name], n_train=2, n_val=1, n_test=1)
    monkeypatch.setitem(toy.TOY_DATASETS, name, small)
    calls = []
    toy.build_toy_dataset(name, tmp_path / "a", seed=0, progress=lambda d, t: calls.append((d, t)))
    n = len(small.classnames)
    split_file = tmp_path / "a" / f"split_zhou_{small.dassl_name}.json"
    split = json.loads(split_file.read_text())
    assert set(split) == {"train", "val", "test"}
    for part, per_class in (("train", 2), ("val", 1), ("test", 1)):
        rows = split[part]
        assert len(rows) == n * per_class and rows == sorted(rows, key=lambda r: (r[1], r[0]))
        for path, label, classname in rows:
            assert isinstance(label, int) and 0 <= label < n and classname == small.classnames[label]
            assert (tmp_path / "a" / "images" / path).is_file()
    assert calls[-1] == (n * 4, n * 4)
    assert not list((tmp_path / "a").glob("*.tmp*"))
    # same seed: byte-identical files; another seed: other pixels
    toy.build_toy_dataset(name, tmp_path / "b", seed=0)
    toy.build_toy_dataset(name, tmp_path / "c", seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()
               for f in files if f.suffix == ".png")


def test_split_images_match_written_files(tmp_path, monkeypatch):
    from PIL import Image

    small = dataclasses.replace(toy.TOY_DATASETS["toy_shapes"], n_train=1, n_val=1, n_test=2)
    monkeypatch.setitem(toy.TOY_DATASETS, "toy_shapes", small)
    toy.build_toy_dataset("toy_shapes", tmp_path, seed=0)
    images, labels = toy.split_images(small, "test", seed=0)
    rows = json.loads((tmp_path / "split_zhou_ToyShapes.json").read_text())["test"]
    for img, label, (path, l2, _) in zip(images, labels, rows):
        assert label == l2
        assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / path).convert("RGB")), img)


# --- the shipped tiny CLIP ----------------------------------------------------------------------


def _load_toy_clip():
    from safetensors.torch import load_file

    cfg = json.loads((TOY_MODEL_DIR / "toy_clip.json").read_text())
    model = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                 text_cfg=cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    state = load_file(str(TOY_MODEL_DIR / "toy_clip.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return cfg, model.eval(), state


def test_shipped_weights_load_into_open_clip():
    weights = TOY_MODEL_DIR / "toy_clip.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    cfg, model, state = _load_toy_clip()
    assert all(v.dtype == torch.float16 for v in state.values())
    assert cfg["preprocess"]["image_size"] == world.IMAGE_SIZE == cfg["vision_cfg"]["image_size"]
    assert len(cfg["preprocess"]["mean"]) == 3 and len(cfg["preprocess"]["std"]) == 3
    assert cfg["text_cfg"]["vocab_size"] == 49408
    assert cfg["pretraining"]["steps"] > 0 and "zero_shot" in cfg["pretraining"]
    assert abs(model.logit_scale.exp().item() - 100.0) < 1.0
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        t = model.encode_text(tok(["a photo of a red star.", "a circle and a square"]))
        i = model.encode_image(torch.zeros(2, 3, world.IMAGE_SIZE, world.IMAGE_SIZE))
    assert t.shape == i.shape == (2, cfg["embed_dim"]) and torch.isfinite(t).all() and torch.isfinite(i).all()


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_shipped_model_zero_shot_well_above_chance(name):
    cfg, model, _ = _load_toy_clip()
    ds = toy.TOY_DATASETS[name]
    pp = cfg["preprocess"]
    images, labels = [], []
    for label, i, scene in toy.split_scenes(ds, "test", seed=0):
        if i < 3:  # a few dozen images: 3 per class
            images.append(world.render(scene))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(pp["mean"]).view(1, 3, 1, 1)) / torch.tensor(pp["std"]).view(1, 3, 1, 1)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok([ds.template.format(c) for c in ds.classnames]), normalize=True)
    acc = ((img @ txt.T).argmax(1) == torch.tensor(labels)).float().mean().item()
    chance = 1.0 / len(ds.classnames)
    assert acc >= 2 * chance, f"{name}: zero-shot {acc:.2f} on {len(labels)} images, chance {chance:.2f}"


def test_pretraining_script_reproduces_its_weights(tmp_path):
    """The shipped weights come from benchmarks/toy_clip/pretrain.py; a re-run must give the same
    weights (every batch is a function of (seed, step); fixed threads). A 3-step miniature run,
    twice, byte for byte; and its recorded zero-shot block is complete."""
    import subprocess
    import sys

    script = TOY_MODEL_DIR.parents[2] / "benchmarks" / "toy_clip" / "pretrain.py"
    args = ["--steps", "3", "--batch", "16", "--warmup", "1", "--width", "64", "--layers", "1",
            "--embed-dim", "32", "--patch", "16"]
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), "--out", str(tmp_path / out), *args], check=True,
                       capture_output=True, timeout=600)
    a = (tmp_path / "a" / "toy_clip.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "toy_clip.safetensors").read_bytes()
    cfg = json.loads((tmp_path / "a" / "toy_clip.json").read_text())
    assert set(cfg["pretraining"]["zero_shot"]) == set(toy.TOY_DATASETS)
    assert cfg["pretraining"]["steps"] == 3 and "pretrain.py" in cfg["pretraining"]["command"]


def test_prepare_regenerates_a_toy_dataset_whose_definition_changed(tmp_path, monkeypatch):
    """A data root prepared by an older cpbench (another world version or domain) must not be
    reused silently with new weights: prepare regenerates it, and the feature-cache tag changes."""
    from cpbench.data import prepare as prep

    small = dataclasses.replace(toy.TOY_DATASETS["toy_shapes"], n_train=2, n_val=1, n_test=1)
    monkeypatch.setitem(toy.TOY_DATASETS, "toy_shapes", small)
    said = []
    ds, _ = prep.prepare("toy_shapes", tmp_path, say=said.append)
    tag, first = ds.cache_tag, (ds.image_root / ds.split.test[0].path).read_bytes()
    ds2, info2 = prep.prepare("toy_shapes", tmp_path, say=said.append)
    assert info2["skipped"] and ds2.cache_tag == tag and not said[1:]
    monkeypatch.setitem(toy.TOY_DATASETS, "toy_shapes", dataclasses.replace(small, domain=(("colour", "blue"),)))
    ds3, info3 = prep.prepare("toy_shapes", tmp_path, say=said.append)
    assert not info3["skipped"] and any("regenerating" in m for m in said)
    assert (ds3.image_root / ds3.split.test[0].path).read_bytes() != first
    assert ds3.cache_tag != tag
    assert all(o.colour == "blue" for _, _, sc in toy.split_scenes(toy.TOY_DATASETS["toy_shapes"], "test")
               for o in sc.objects)
