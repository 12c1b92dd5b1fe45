"""Image-caption datasets through the downloader: miniature MSCOCO and Flickr30k releases in the
real layouts (Karpathy's caption_datasets.zip, COCO's val2014.zip, Flickr30k's image tarball)
prepare like the classification datasets: download from a loopback HTTP server (resuming a partial
file, re-fetching a corrupted one), or take them with --from where the licence asks for it, verify
them against the caption file, and refuse an image archive that does not match."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_datasets_download import jpeg, loopback_spec, pack, serve  # noqa: E402

from cpbench.data import captions  # noqa: E402
from cpbench.data import catalog  # noqa: E402
from cpbench.data import prepare as prep  # noqa: E402
from cpbench.data.specs import Expected  # noqa: E402
from cpbench.errors import UserError  # noqa: E402


def _karpathy(prefix: str, pool: str, counts: dict, filepath: str = "") -> tuple[dict, dict[str, bytes]]:
    """A Karpathy caption file and the images it names: counts = {split: images}."""
    images, files, n = [], {}, 0
    for split, k in counts.items():
        for _ in range(k):
            n += 1
            name = f"{prefix}_{n:012d}.jpg"
            images.append({"filepath": filepath, "filename": name, "split": split, "imgid": n,
                           "sentences": [{"raw": f"A photo number {n}, caption {j} ."} for j in range(5)]})
            files[f"{filepath}/{name}" if filepath else name] = jpeg(n)
    return {"images": images, "dataset": prefix}, files


def _coco_files(drop_one: bool = False) -> dict[str, bytes]:
    coco, coco_images = _karpathy("COCO_val2014", "val", {"val": 3, "test": 2, "restval": 1}, filepath="val2014")
    flickr, _ = _karpathy("flickr", "train", {"train": 2, "test": 1})
    if drop_one:
        coco_images.pop(sorted(coco_images)[0])
    zip_ = pack("caption_datasets.zip", {"dataset_coco.json": json.dumps(coco).encode(),
                                         "dataset_flickr30k.json": json.dumps(flickr).encode(),
                                         "dataset_flickr8k.json": b"{}"})
    return {"caption_datasets.zip": zip_, "val2014.zip": pack("val2014.zip", coco_images)}


def _mini(spec_name: str, base: str, files: dict, **expected):
    return dataclasses.replace(loopback_spec(spec_name, base, files), expected=Expected(**expected))


def test_mscoco_miniature_downloads_resumes_and_verifies(tmp_path):
    files = _coco_files()
    root = tmp_path / "data"
    part = root / ".downloads" / "mscoco" / "val2014.zip.part"  # left by an interrupted run
    part.parent.mkdir(parents=True)
    part.write_bytes(files["val2014.zip"][: len(files["val2014.zip"]) // 2])
    with serve(files, corrupt_once={"caption_datasets.zip"}) as (base, log):
        spec = _mini("mscoco", base, files, train=3, test=2)
        ds, info = prep.prepare("mscoco", root, spec=spec, shots=[2], seeds=[1])
    assert [r for f, r in log if f == "val2014.zip"][0] == f"bytes={len(files['val2014.zip']) // 2}-"  # resumed
    assert [r for f, r in log if f == "caption_datasets.zip"] == [None, None]  # corrupt: fetched again
    assert info["sources"]["caption_datasets.zip"]["checksum"] == "ok"
    assert info["counts"] == {"train": 3, "val": 0, "test": 2, "captions": 10}
    assert sorted(p.name for p in ds.dir.glob("dataset_*.json")) == ["dataset_coco.json"]  # only its member
    # the few-shot pool is Karpathy's val split, the test split its test split; paths under val2014/
    assert [p.path for p in ds.split.train] == [f"val2014/COCO_val2014_{i:012d}.jpg" for i in (1, 2, 3)]
    assert ds.split.test[0].captions[0] == "A photo number 4, caption 0 ."  # stripped, as CPL's script
    assert all((ds.image_root / p.path).is_file() for p in (*ds.split.train, *ds.split.test))
    again = captions.load("mscoco", root, spec=spec)
    assert again.split == ds.split and again.pairs(2, 1) == ds.pairs(2, 1)
    _, info2 = prep.prepare("mscoco", root, spec=spec)
    assert info2["skipped"] is True
    assert prep.check("mscoco", root, spec=spec)["ok"]
    with pytest.raises(UserError, match="run it with --protocol retrieval"):
        prep.load("mscoco", root, spec=spec)


def test_an_image_archive_that_does_not_match_the_captions_is_refused(tmp_path):
    files = _coco_files(drop_one=True)
    with serve(files) as (base, _log):
        with pytest.raises(UserError, match="images named by the caption file are missing"):
            prep.prepare("mscoco", tmp_path, spec=_mini("mscoco", base, files, train=3, test=2))
    assert not (tmp_path / "mscoco" / prep.MARKER).exists()
    with serve(_coco_files()) as (base, _log):  # the official sizes are checked too
        with pytest.raises(UserError, match="train has 3 images, expected 5000"):
            prep.prepare("mscoco", tmp_path / "b", spec=dataclasses.replace(
                _mini("mscoco", base, _coco_files()), expected=catalog.get_spec("mscoco").expected))


def test_flickr30k_images_come_with_from(tmp_path):
    flickr, images = _karpathy("flickr", "train", {"train": 4, "val": 1, "test": 2})
    flickr["images"][-1]["sentences"][0]["raw"] = "y" * 300
    files = {"caption_datasets.zip": pack("caption_datasets.zip", {"dataset_flickr30k.json": json.dumps(flickr).encode()}),
             "flickr30k-images.tar.gz": pack(".tar.gz", {f"flickr30k-images/{k}": v for k, v in images.items()})}
    spec = dataclasses.replace(catalog.get_spec("flickr30k"), expected=Expected(train=4, test=2))
    with pytest.raises(UserError, match="request form.*--from"):
        prep.prepare("flickr30k", tmp_path / "data", spec=spec)
    given = tmp_path / "given"
    given.mkdir()
    for name, data in files.items():
        (given / name).write_bytes(data)
    ds, info = prep.prepare("flickr30k", tmp_path / "data", from_dir=given, spec=spec, shots=[3], seeds=[1, 2])
    assert info["counts"]["test"] == 2 and info["counts"]["captions"] == 10
    assert info["fewshot"] == {"3 pairs seed 1": (3, 0), "3 pairs seed 2": (3, 0)}
    assert len(ds.split.test[-1].captions[0]) == 265  # Flickr30k test captions cut at 265 characters
    assert ds.image_root == ds.dir / "flickr30k-images"
    assert prep.check("flickr30k", tmp_path / "data", spec=spec)["ok"]


def test_captioned_datasets_are_listed_apart_from_classification():
    specs = {n: s for n, s in catalog.all_specs().items() if s.task == "retrieval"}
    assert set(specs) == {"flickr30k", "mscoco", "toy_captions"}
    assert specs["flickr30k"].kind == "manual" and specs["mscoco"].kind == "download"
    assert specs["toy_captions"].kind == "generated"
