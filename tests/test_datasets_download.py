"""Every dataset end to end through the downloader: a miniature archive in the real layout is
served from a loopback HTTP server; ``prepare`` downloads it (resuming a partial file and
re-fetching a corrupted one), extracts it and yields the expected split and class names."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import zipfile
from contextlib import contextmanager

import pytest
from PIL import Image

from cpbench.data import prepare as prep
from cpbench.data import readers
from cpbench.data.catalog import all_specs
from cpbench.data.specs import Expected
from cpbench.errors import UserError

# --------------------------------------------------------------------------- loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes]
    log: list[tuple[str, str | None]]
    corrupt_once: set[str]

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/").split("?")[0]
        rng = self.headers.get("Range")
        self.log.append((name, rng))
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if name in self.corrupt_once:  # first answer for this file: flipped bytes
            self.corrupt_once.discard(name)
            body = bytes(b ^ 0x5A for b in body[:64]) + body[64:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serve(files: dict[str, bytes], corrupt_once=()):
    handler = type("H", (_Handler,), {"files": files, "log": [], "corrupt_once": set(corrupt_once)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.log
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


# --------------------------------------------------------------------------- miniature archives


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def pack(name: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    if name.endswith(".zip"):
        with zipfile.ZipFile(buf, "w") as zf:
            for m, data in sorted(members.items()):
                zf.writestr(m, data)
    else:
        mode = "w:gz" if name.endswith((".gz", ".tgz")) else "w"
        with tarfile.open(fileobj=buf, mode=mode) as tf:
            for m, data in sorted(members.items()):
                info = tarfile.TarInfo(m)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _split(classes, path_of):
    """1 train / 1 val / 1 test image per class; returns (split json obj, {image path: bytes})."""
    obj = {"train": [], "val": [], "test": []}
    images = {}
    n = 0
    for label, (folder, name) in enumerate(classes):
        for part in ("train", "val", "test"):
            n += 1
            p = path_of(folder, n)
            obj[part].append([p, label, name])
            images[p] = jpeg(n)
    return obj, images


def _under(prefix: str, images: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{prefix}/{k}" if prefix else k: v for k, v in images.items()}


def build(name: str):
    """(files served by name, expected class names in label order, expected (train, val, test))."""
    if name == "caltech101":
        classes = [("Faces", "face"), ("airplanes", "airplane"), ("yin_yang", "yin_yang")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/image_{n:04d}.jpg")
        inner = pack("x.tar.gz", {**_under("101_ObjectCategories", imgs),
                                  "101_ObjectCategories/BACKGROUND_Google/image_0001.jpg": jpeg(99)})
        return {"caltech-101.zip": pack("a.zip", {"caltech-101/101_ObjectCategories.tar.gz": inner,
                                                  "caltech-101/Annotations.tar": b"x"}),
                "split_zhou_Caltech101.json": json.dumps(obj).encode()}, [n for _, n in classes], (3, 3, 3)
    if name == "oxford_pets":
        classes = [("Abyssinian", "abyssinian"), ("american_bulldog", "american_bulldog")]
        obj, imgs = _split(classes, lambda f, n: f"{f}_{n}.jpg")
        return {"images.tar.gz": pack(".tar.gz", _under("images", imgs)),
                "annotations.tar.gz": pack(".tar.gz", {"annotations/trainval.txt": b"Abyssinian_1 1 1 1\n"}),
                "split_zhou_OxfordPets.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "stanford_cars":
        classes = [("a", "2000 AM General Hummer SUV"), ("b", "2012 Acura RL Sedan")]
        obj, imgs = _split(classes, lambda f, n: f"cars_{'train' if n % 3 else 'test'}/{n:05d}.jpg")
        return {"cars_train.tgz": pack(".tgz", {k: v for k, v in imgs.items() if k.startswith("cars_train")}),
                "cars_test.tgz": pack(".tgz", {k: v for k, v in imgs.items() if k.startswith("cars_test")}),
                "car_devkit.tgz": pack(".tgz", {"devkit/cars_meta.mat": b"mat"}),
                "cars_test_annos_withlabels.mat": b"mat",
                "split_zhou_StanfordCars.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "oxford_flowers":
        classes = [("1", "pink primrose"), ("2", "hard-leaved pocket orchid")]
        obj, imgs = _split(classes, lambda f, n: f"image_{n:05d}.jpg")
        return {"102flowers.tgz": pack(".tgz", _under("jpg", imgs)), "imagelabels.mat": b"mat",
                "cat_to_name.json": json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}).encode(),
                "split_zhou_OxfordFlowers.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "food101":
        classes = [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/{n}.jpg")
        return {"food-101.tar.gz": pack(".tar.gz", {**_under("food-101/images", imgs),
                                                    "food-101/meta/classes.txt": b"apple_pie\n"}),
                "split_zhou_Food101.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "fgvc_aircraft":
        variants = ["707-320", "A300B4", "Cessna 172"]
        members = {"fgvc-aircraft-2013b/README.md": b"readme",
                   "fgvc-aircraft-2013b/data/variants.txt": ("\n".join(variants) + "\n").encode()}
        n = 0
        for part in ("train", "val", "test"):
            lines = []
            for v in reversed(variants):  # list order differs from label order
                n += 1
                lines.append(f"{1000000 + n} {v}")
                members[f"fgvc-aircraft-2013b/data/images/{1000000 + n}.jpg"] = jpeg(n)
            members[f"fgvc-aircraft-2013b/data/images_variant_{part}.txt"] = ("\n".join(lines) + "\n").encode()
        return {"fgvc-aircraft-2013b.tar.gz": pack(".tar.gz", members)}, variants, (3, 3, 3)
    if name == "sun397":
        classes = [("a/abbey", "abbey"), ("a/apartment_building/outdoor", "outdoor apartment_building")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/sun_{n}.jpg")
        return {"SUN397.tar.gz": pack(".tar.gz", _under("SUN397", imgs)),
                "Partitions.zip": pack(".zip", {"ClassName.txt": b"/a/abbey\n"}),
                "split_zhou_SUN397.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "dtd":
        classes = [("banded", "banded"), ("blotchy", "blotchy")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/{f}_{n:04d}.jpg")
        return {"dtd-r1.0.1.tar.gz": pack(".tar.gz", {**_under("dtd/images", imgs), "dtd/labels/train1.txt": b"x"}),
                "split_zhou_DescribableTextures.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "eurosat":
        classes = [("AnnualCrop", "Annual Crop Land"), ("SeaLake", "Sea or Lake")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/{f}_{n}.jpg")
        return {"EuroSAT.zip": pack(".zip", _under("2750", imgs)),
                "split_zhou_EuroSAT.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "ucf101":
        classes = [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Band_Marching", "Band_Marching")]
        obj, imgs = _split(classes, lambda f, n: f"{f}/v_{f.replace('_', '')}_g01_c0{n}.jpg")
        return {"UCF-101-midframes.zip": pack(".zip", _under("UCF-101-midframes", imgs)),
                "split_zhou_UCF101.json": json.dumps(obj).encode()}, [n for _, n in classes], (2, 2, 2)
    if name == "imagenetv2":
        members = {f"imagenetv2-matched-frequency-format-val/{c}/{i}.jpeg": jpeg(c * 3 + i)
                   for c in (0, 1, 2, 10) for i in range(2)}
        names = readers.imagenet_names()
        return {"imagenetv2-matched-frequency.tar.gz": pack(".tar.gz", members)}, \
            [names[i] for i in (0, 1, 2, 10)], (0, 0, 8)
    if name in ("imagenet_sketch", "imagenet_a", "imagenet_r"):  # labels: sorted wnids -> ImageNet 2, 7, 500
        wnids = [readers.imagenet_wnids()[i] for i in (7, 2, 500)]
        top = {"imagenet_sketch": "sketch", "imagenet_a": "imagenet-a", "imagenet_r": "imagenet-r"}[name]
        members = {f"{top}/{w}/{i}.JPEG": jpeg(i + k * 5) for k, w in enumerate(wnids) for i in range(2)}
        if name != "imagenet_sketch":
            members[f"{top}/README.txt"] = b"readme"
        fname = {"imagenet_sketch": "ImageNet-Sketch.zip", "imagenet_a": "imagenet-a.tar",
                 "imagenet_r": "imagenet-r.tar"}[name]
        names = readers.imagenet_names()
        return {fname: pack(fname, members)}, [names[i] for i in (2, 7, 500)], (0, 0, 6)
    raise AssertionError(name)


# classification datasets (the image-caption ones have their miniatures in test_datasets_captions.py)
DOWNLOADED = [n for n, s in all_specs().items() if s.kind == "download" and s.task == "classification"]


def loopback_spec(name: str, base: str, files: dict[str, bytes]):
    spec = all_specs()[name]
    sources = tuple(dataclasses.replace(src, urls=(f"{base}/missing/{src.filename}", f"{base}/{src.filename}"),
                                        sha256=hashlib.sha256(files[src.filename]).hexdigest(), md5=None)
                    for src in spec.sources)
    return dataclasses.replace(spec, sources=sources, expected=Expected())


def test_every_builtin_dataset_has_a_miniature():
    assert len([n for n, s in all_specs().items() if s.kind in ("download", "manual") and s.task == "classification"]) == 15
    assert set(DOWNLOADED) | {"imagenet"} == {
        "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
        "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


@pytest.mark.parametrize("name", DOWNLOADED)
def test_prepare_downloads_miniature(name, tmp_path):
    files, classnames, (ntr, nva, nte) = build(name)
    first = all_specs()[name].sources[0].filename
    last = all_specs()[name].sources[-1].filename
    root = tmp_path / "data"
    # a partial download left by an interrupted run: the first half of the first source
    part = root / ".downloads" / name / f"{first}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[first][: len(files[first]) // 2])
    with serve(files, corrupt_once={last}) as (base, log):
        spec = loopback_spec(name, base, files)
        ds, info = prep.prepare(name, root, spec=spec, shots=[1], seeds=[1])
    # resumed: the first file was asked for from its middle, never from the start
    ranges = [r for f, r in log if f == first]
    assert ranges[0] == f"bytes={len(files[first]) // 2}-", log
    # the corrupted answer was detected by checksum and fetched again (in full)
    assert [r for f, r in log if f == last][-2:] == ([f"bytes={len(files[first]) // 2}-"] if first == last else [None]) + [None], log
    assert info["sources"][last]["checksum"] == "ok"
    assert (len(ds.split.train), len(ds.split.val), len(ds.split.test)) == (ntr, nva, nte)
    assert ds.split.classnames == classnames
    for item in (*ds.split.train, *ds.split.val, *ds.split.test):
        assert (ds.image_root / item.path).is_file(), item
    assert not list(tmp_path.glob("*.jpg"))
    # loadable for `run`, and a re-run is a quick verified skip
    again = prep.load(name, root, spec=spec)
    assert again.split == ds.split
    _, info2 = prep.prepare(name, root, spec=spec)
    assert info2["skipped"] is True
    assert prep.check(name, root, spec=spec)["ok"]


def test_imagenet_a_r_keep_imagenet_indices(tmp_path):
    for name in ("imagenet_a", "imagenet_r", "imagenet_sketch"):
        files, classnames, _ = build(name)
        with serve(files) as (base, _log):
            ds, _ = prep.prepare(name, tmp_path, spec=loopback_spec(name, base, files))
        assert ds.imagenet_indices == [2, 7, 500]
        assert [readers.imagenet_names()[i] for i in ds.imagenet_indices] == ds.split.classnames
        assert (ds.dir / "classnames.txt").read_text().splitlines()[0] == "n01440764 tench"


def test_imagenet_manual_message_then_folders(tmp_path):
    with pytest.raises(UserError, match=r"image-net\.org.*imagenet/images/train/<wnid>"):
        prep.prepare("imagenet", tmp_path, spec=dataclasses.replace(all_specs()["imagenet"], expected=Expected()))
    wnids = readers.imagenet_wnids()[:3]
    for part in ("train", "val"):
        for k, w in enumerate(wnids):
            d = tmp_path / "imagenet" / "images" / part / w
            d.mkdir(parents=True)
            for i in (2, 1, 0):
                (d / f"{w}_{part}_{i}.JPEG").write_bytes(jpeg(i + k))
    spec = dataclasses.replace(all_specs()["imagenet"], expected=Expected(train=9, val=9, test=9, classes=3))
    ds, _ = prep.prepare("imagenet", tmp_path, spec=spec, shots=[2], seeds=[1])
    assert ds.split.classnames == ["tench", "goldfish", "great white shark"]
    assert ds.split.val == ds.split.test  # val is the test set
    assert [i.path for i in ds.split.train[:3]] == sorted(i.path for i in ds.split.train[:3])  # sorted listing
    lines = (tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()
    assert len(lines) == 1000 and lines[2] == "n01484850 great white shark"
    assert (tmp_path / "imagenet" / prep.SPLIT_CACHE).is_file()
    assert prep.load("imagenet", tmp_path, spec=spec).split == ds.split
    assert ds.imagenet_indices == [0, 1, 2]


def test_a_wnid_missing_from_classnames_txt_is_an_error_naming_it(tmp_path):
    """The official readers index ``classnames[folder]`` (a KeyError); a wnid never stands in as a
    class name."""
    wnids = readers.imagenet_wnids()[:2]
    ddir = tmp_path / "imagenet"
    for part in ("train", "val"):
        for k, w in enumerate(wnids):
            d = ddir / "images" / part / w
            d.mkdir(parents=True)
            (d / f"{w}_{part}.JPEG").write_bytes(jpeg(k))
    (ddir / "classnames.txt").write_text(f"{wnids[0]} tench\n", encoding="utf-8")   # the second wnid's line is lost
    with pytest.raises(UserError, match=rf"classnames.txt has no line for wnid {wnids[1]}"):
        readers.read_imagenet(ddir)
    (ddir / "classnames.txt").unlink()                    # the packaged table: every ImageNet-1k wnid
    assert readers.read_imagenet(ddir).classnames == ["tench", "goldfish"]
    (ddir / "images" / "train" / "n99999999").mkdir()
    (ddir / "images" / "train" / "n99999999" / "x.JPEG").write_bytes(jpeg(5))
    with pytest.raises(UserError, match="n99999999 .*is not an ImageNet-1k wnid"):
        readers.read_imagenet(ddir)


def test_traversal_member_refused_nothing_outside(tmp_path):
    files, _, _ = build("dtd")
    files["dtd-r1.0.1.tar.gz"] = pack(".tar.gz", {"dtd/images/a/x.jpg": jpeg(1), "dtd/../../../evil.txt": b"x"})
    root = tmp_path / "sub" / "data"
    with serve(files) as (base, _log):
        with pytest.raises(UserError, match="outside"):
            prep.prepare("dtd", root, spec=loopback_spec("dtd", base, files))
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("evil" in p for p in written), written
    assert not (root / "dtd" / prep.MARKER).exists()


def test_two_prepares_on_one_root_do_not_clobber(tmp_path):
    files, classnames, _ = build("eurosat")
    results, errors = [], []
    with serve(files) as (base, log):
        spec = loopback_spec("eurosat", base, files)

        def one():
            try:
                results.append(prep.prepare("eurosat", tmp_path, spec=spec)[1]["skipped"])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors and sorted(results) == [False, True]  # one prepared, the other waited and verified
    assert len([f for f, _ in log if f == "EuroSAT.zip"]) == 1


def _coop_eurosat(tmp_path):
    """A miniature EuroSAT laid out as in a CoOp DATA folder (no cpbench marker), and its spec."""
    files, classnames, _ = build("eurosat")
    ddir = tmp_path / "eurosat"
    with zipfile.ZipFile(io.BytesIO(files["EuroSAT.zip"])) as zf:
        zf.extractall(ddir)
    (ddir / "split_zhou_EuroSAT.json").write_bytes(files["split_zhou_EuroSAT.json"])
    spec = dataclasses.replace(all_specs()["eurosat"], expected=Expected(train=2, val=2, test=2, classes=2),
                               sources=())
    return files, classnames, ddir, spec


def test_existing_coop_folder_works_unchanged_as_root(tmp_path):
    """A CoOp DATA folder (no cpbench marker) is loaded as is, and prepare adopts it offline."""
    files, classnames, ddir, spec = _coop_eurosat(tmp_path)
    ds = prep.load("eurosat", tmp_path, spec=spec)
    assert ds.split.classnames == classnames
    ds2, info = prep.prepare("eurosat", tmp_path, spec=spec)  # no sources: nothing can be downloaded
    assert info["sources"] == {"existing": str(ddir)} and ds2.split == ds.split


def test_an_adopted_folder_with_an_image_that_does_not_decode_is_refused_by_name(tmp_path):
    """Images adopted without an official checksum (here an existing CoOp folder) are all decoded
    before the dataset is marked ready (issue 29)."""
    from cpbench.errors import UserError

    files, _, ddir, spec = _coop_eurosat(tmp_path)
    bad = json.loads(files["split_zhou_EuroSAT.json"])["test"][0][0]
    (ddir / spec.image_dir / bad).write_text("text, not an image")
    with pytest.raises(UserError, match=rf"1 image\(s\) do not decode \({re.escape(bad)}\)"):
        prep.prepare("eurosat", tmp_path, spec=spec)
    assert not (ddir / ".cpbench.json").exists()
