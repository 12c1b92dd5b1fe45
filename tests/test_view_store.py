"""Keyed augmentation and the training-view store (issue 31):

- a training view is a pure function of (seed, epoch, image): the same pixels whatever the order,
  the batch or the loader, other pixels at another epoch or seed, and the global generator (a
  method's in-forward sampling) untouched;
- every ``view_store`` method's ``forward_train`` equals ``forward_train_frozen`` of the frozen
  encoder's output, bit for bit (what lets the store serve it);
- coop then kgcoop (another batch size) trained from the store give the very rows and the very
  learned state (bit for bit) of the same runs with ``--no-cache``; kgcoop encodes no training
  image at all; the store holds one shard per epoch;
- the store's key separates what decides the encoder's output (seed, dataset, precision, ...);
  shards round-trip; the size cap evicts the least recently used files; ``cpbench cache`` shows
  and clears.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

from cpbench.data.images import train_pixels  # noqa: E402
from cpbench.data.splits import Item  # noqa: E402
from cpbench.engine import cache as cachemod  # noqa: E402
from cpbench.engine.augment import KeyedImageList, view_seed  # noqa: E402
from cpbench.engine.views import ViewStore  # noqa: E402
from cpbench.methods.registry import get_method_class, method_names  # noqa: E402
from cpbench.protocols import base2new  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings, job_config  # noqa: E402
from cpbench.protocols.keys import training_key  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402
from cpbench.engine import checkpoint  # noqa: E402

SETS = ["epochs=2", "batch_size=3", "test_batch_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    make_caltech(root / "data", n_train=5)
    return root / "data"


def _items(data: Path):
    root = data / "caltech-101" / "101_ObjectCategories"
    items = [Item(str(p.relative_to(root)), i % 4, "") for i, p in enumerate(sorted(root.rglob("*.jpg"))[:8])]
    return root, items


# ----------------------------------------------------------------------------- keyed augmentation

def test_keyed_view_is_a_function_of_seed_epoch_and_image(data, tiny_backbone):
    root, items = _items(data)
    pixels = train_pixels(tiny_backbone.preprocess)
    ds = KeyedImageList(items, root, pixels, seed=1)
    ds.set_epoch(3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    forward = [ds[i][0] for i in range(len(items))]
    assert torch.equal(torch.get_rng_state(), before), "augmentation must not consume the global generator"
    backward = {i: ds[i][0] for i in reversed(range(len(items)))}
    assert all(torch.equal(forward[i], backward[i]) for i in range(len(items)))
    # the same image listed elsewhere (another item list, another index) gets the same view
    other = KeyedImageList(list(reversed(items)), root, pixels, seed=1)
    other.set_epoch(3)
    assert torch.equal(other[len(items) - 1][0], forward[0])
    # through a loader with a worker process: the same views
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=1)
    assert torch.equal(torch.cat([x for x, _, _ in loader]), torch.stack(forward))
    ds.set_epoch(4)
    assert any(not torch.equal(ds[i][0], forward[i]) for i in range(len(items)))
    seeded2 = KeyedImageList(items, root, pixels, seed=2)
    seeded2.set_epoch(3)
    assert any(not torch.equal(seeded2[i][0], forward[i]) for i in range(len(items)))
    assert view_seed(1, 3, items[0].path) == view_seed(1, 3, items[0].path) != view_seed(1, 4, items[0].path)


def test_keyed_views_are_random_crops_and_flips(data, tiny_backbone):
    """Fresh views across epochs (not one fixed crop): the statistics of Dassl's pipeline."""
    root, items = _items(data)
    ds = KeyedImageList(items[:1], root, train_pixels(tiny_backbone.preprocess), seed=1)
    views = set()
    for e in range(12):
        ds.set_epoch(e)
        views.add(ds[0][0].numpy().tobytes())
    assert len(views) >= 10


# ----------------------------------------------------------------------------- the method contract

def _build(name: str, bb):
    cls = get_method_class(name)
    names = ["accordion", "airplane", "anchor", "ant"]
    m = cls(bb, names, cls.Options())
    if name == "cpl":
        m.set_negative_features(torch.randn(len(names), bb.embed_dim, generator=torch.Generator().manual_seed(4)))
    if name == "tip_adapter_f":
        feats = torch.randn(8, bb.embed_dim, generator=torch.Generator().manual_seed(5))
        m.set_cache(feats, torch.arange(8) % 4)
        m.adapter.weight = torch.nn.Parameter(m.cache_keys.detach().clone())
    return m


STORE_METHODS = sorted(n for n in method_names() if get_method_class(n).view_store)


def test_view_store_methods_are_the_text_side_ones():
    assert {"coop", "kgcoop", "pre", "coop_lamm", "lamm", "prograd", "cocoop", "coopvpt", "cocoopvpt", "cpl",
            "clip_adapter", "tip_adapter_f"} <= set(STORE_METHODS)
    for n in ("maple", "ivlp", "promptsrc", "maple_lamm", "clip_lora"):
        cls = get_method_class(n)
        assert cls.image_prompted or not cls.view_store, n


@pytest.mark.parametrize("name", STORE_METHODS)
def test_forward_train_is_forward_train_frozen_of_the_encoder(name, tiny_backbone):
    m = _build(name, tiny_backbone)
    m.train()
    x = torch.randn(3, 3, tiny_backbone.preprocess.image_size, tiny_backbone.preprocess.image_size,
                    generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1])
    torch.manual_seed(9)
    logits_a, terms_a = m.forward_train(x, y)
    with torch.no_grad():
        raw = tiny_backbone.encode_image(x)
    torch.manual_seed(9)
    logits_b, terms_b = m.forward_train_frozen(raw, y)
    assert torch.equal(logits_a, logits_b)
    assert sorted(terms_a) == sorted(terms_b)
    for k in terms_a:
        assert torch.equal(terms_a[k], terms_b[k]), k


# ----------------------------------------------------------------------------- exact rows from the store

def _settings(data: Path, res: Path, cache: bool, sets=()) -> RunSettings:
    return RunSettings(data_root=data, results_root=res, backbone="tiny", pretrained="none", sets=[*SETS, *sets],
                       feature_cache=cache)


def _run(method: str, s: RunSettings, bb):
    job = base2new.plan(method, ["caltech101"], [1], 2)[0]
    run_job(job, bb, s, ResultStore(s.results_root))
    final = checkpoint.load(s.results_root / "checkpoints" / training_key(job, job_config(job, s), s), "final")
    frame = ResultStore(s.results_root).read().frame
    rows = frame[frame.method == method].sort_values("subset")
    return rows, final


def test_training_from_the_store_gives_identical_rows_and_state(data, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("CPBENCH_CACHE", str(tmp_path / "cache"))
    runs = {}
    for method, sets in (("coop", ()), ("kgcoop", ("batch_size=2",))):   # the store serves any batch size
        off = _settings(data, tmp_path / "off", cache=False, sets=sets)
        on = _settings(data, tmp_path / "on", cache=True, sets=sets)
        runs[method, "off"] = _run(method, off, tiny_backbone)
        calls = []
        real = tiny_backbone.encode_image
        monkeypatch.setattr(tiny_backbone, "encode_image",
                            lambda *a, _c=calls, _f=real, **k: (_c.append(1), _f(*a, **k))[1])
        runs[method, "on"] = _run(method, on, tiny_backbone)
        monkeypatch.setattr(tiny_backbone, "encode_image", real)
        if method == "kgcoop":
            assert not calls, "kgcoop encoded images although coop had stored every view (and the test features)"
        else:
            assert calls
    for method in ("coop", "kgcoop"):
        (r_off, f_off), (r_on, f_on) = runs[method, "off"], runs[method, "on"]
        assert list(r_on.accuracy) == list(r_off.accuracy) and list(r_on.correct) == list(r_off.correct)
        assert set(r_on.feature_cache) == {"test+train-views"} and set(r_off.feature_cache) == {"off"}
        assert sorted(f_on[0]) == sorted(f_off[0])
        for k in f_off[0]:
            assert torch.equal(f_on[0][k], f_off[0][k]), (method, k)
    shards = sorted((tmp_path / "cache" / "views").rglob("epoch-*.safetensors"))
    assert [p.name for p in shards] == ["epoch-0000.safetensors", "epoch-0001.safetensors"]
    assert (shards[0].parent / "about.json").is_file()


# ----------------------------------------------------------------------------- the store itself

def test_context_key_separates_what_decides_the_features(data):
    _, items = _items(data)
    base = {"backbone_fp": "fp", "precision": "fp32", "device": "cpu", "transform": "t", "dataset": "d",
            "items": items, "seed": 1}
    key = ViewStore.context(**base)[0]
    assert ViewStore.context(**base)[0] == key
    for change in ({"seed": 2}, {"dataset": "e"}, {"precision": "amp"}, {"device": "cuda"}, {"items": items[:-1]},
                   {"backbone_fp": "other"}, {"transform": "u"}):
        assert ViewStore.context(**{**base, **change})[0] != key, change


def test_shards_round_trip_and_the_cap_evicts_least_recently_used(tmp_path, monkeypatch):
    import os

    store = ViewStore(tmp_path / "views")
    feats = torch.randn(10, 8, dtype=torch.float16)
    store.save("k", 0, feats, {"what": "test"})
    got = store.load("k", 0, 10)
    assert torch.equal(got, feats) and got.dtype == torch.float16
    assert store.load("k", 1, 10) is None and store.load("k", 0, 11) is None
    size = store.shard("k", 0).stat().st_size
    store.save("k", 1, feats, {"what": "test"})
    store.save("k", 2, feats, {"what": "test"})
    for e, t in ((0, 100), (1, 300), (2, 200)):
        os.utime(store.shard("k", e), (t, t))
    store.load("k", 0, 10)   # a read makes epoch 0 the most recently used
    monkeypatch.setenv("CPBENCH_CACHE_MAX", str(2 * size))
    store.save("j", 0, feats, {"what": "test"})
    left = sorted(p.relative_to(tmp_path / "views").as_posix() for p in (tmp_path / "views").rglob("*.safetensors"))
    assert left == ["j/epoch-0000.safetensors", "k/epoch-0000.safetensors"]
    u = cachemod.usage(tmp_path)
    assert u["views"]["files"] == 2 and u["views"]["entries"] == 2 and u["views"]["bytes"] == 2 * size
    assert cachemod.parse_size("1.5G") == 3 << 29 and cachemod.parse_size("500MiB") == 500 << 20


def test_cache_command_shows_sets_a_cap_and_clears(tmp_path, cli_here, monkeypatch):
    monkeypatch.setenv("CPBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("CPBENCH_CACHE_MAX", raising=False)
    cli = cli_here
    ViewStore(tmp_path / "views").save("k", 0, torch.zeros(4, 2), {"dataset": "x"})
    cachemod.FeatureCache(tmp_path / "features").put("f", torch.zeros(3, 2))
    code, out, err = cli("cache")
    assert code == 0, err
    assert "views" in out and "features" in out and str(tmp_path) in out
    code, out, err = cli("cache", "--max-size", "10G")
    assert code == 0, err
    assert cachemod.limit_bytes(tmp_path) == 10 << 30
    code, out, err = cli("cache", "--max-size", "lots")
    assert code == 2 and "not a size" in err
    code, out, err = cli("cache", "clear", "--kind", "views")
    assert code == 0, err
    assert not (tmp_path / "views").exists() and (tmp_path / "features" / "f.safetensors").exists()
    code, out, err = cli("cache", "clear")
    assert code == 0 and not (tmp_path / "features").exists()


def test_launcher_never_fills_the_same_views_twice_at_once():
    """The first job of a view group runs alone; the group's others wait for it (other groups'
    jobs go first), then run together."""
    import threading

    from cpbench.launch.local import ViewQueue
    from cpbench.protocols.jobs import Job

    def job(method, seed):
        return Job(method, "base2new", "caltech101", "base", 16, seed, ())

    a1, a2, a3, b1 = job("coop", 1), job("kgcoop", 1), job("pre", 1), job("coop", 2)
    q = ViewQueue([a1, a2, a3, b1])
    stop = threading.Event()
    assert q.take(stop) is a1
    assert q.take(stop) is b1          # a2 waits: a1 is filling seed 1's views
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(stop)))
    t.start()
    t.join(timeout=0.3)
    assert t.is_alive() and not got    # nothing else may start while a1 fills
    q.finished(a1)
    t.join(timeout=5)
    assert got == [a2]
    assert q.take(stop) is a3          # after the filler, the readers run together
    q.finished(b1)
    assert q.take(stop) is None
