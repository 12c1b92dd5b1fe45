"""Split readers for layouts that come without a CoOp ``split_zhou_*.json``.

Each reader takes the dataset folder and returns a :class:`~cpbench.data.splits.Split` whose
paths are relative to the spec's ``image_dir``. Listings are always sorted (Dassl does not sort
ImageNet's files within a class, so CoOp's ImageNet few-shot draws depend on the filesystem;
cpbench sorts, a documented deviation that makes the draw portable).

ImageNet class names come from ``cpbench/data/imagenet_classnames.json``: OpenAI's 1000 CLIP
names in the order of the sorted ILSVRC-2012 wnids, so ``classnames.txt`` (``<wnid> <name>``) is
built offline instead of being fetched from Google Drive. An existing ``classnames.txt`` (a CoOp
DATA folder) wins.

ImageNet-A and -R are 200-class datasets labelled 0..199 over their own sorted wnid folders, as
in CoOp; :func:`imagenet_indices` maps those labels back to ImageNet's 1000-way indices so a
class-specific method trained on ImageNet can gather its rows.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from cpbench import atomic
from cpbench.data.splits import Item, Split
from cpbench.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@lru_cache(maxsize=1)
def _imagenet_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    obj = json.loads(resources.files("cpbench.data").joinpath("imagenet_classnames.json").read_text(encoding="utf-8"))
    return tuple(obj["wnids"]), tuple(obj["names"])


def imagenet_wnids() -> list[str]:
    return list(_imagenet_table()[0])


def imagenet_names() -> list[str]:
    return list(_imagenet_table()[1])


def imagenet_classnames(ddir: Path) -> dict[str, str]:
    """wnid -> name: the folder's ``classnames.txt`` when present, else the packaged table."""
    path = Path(ddir) / "classnames.txt"
    if path.is_file():
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                wnid, _, name = line.partition(" ")
                out[wnid] = name.strip()
        return out
    wnids, names = _imagenet_table()
    return dict(zip(wnids, names))


def write_classnames(ddir: Path) -> Path:
    """Write CoOp's ``classnames.txt`` (``<wnid> <name>``, 1000 lines) from the packaged table."""
    path = Path(ddir) / "classnames.txt"
    if not path.exists():
        wnids, names = _imagenet_table()
        atomic.write_text(path, "".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    return path


def imagenet_indices(wnids: list[str]) -> list[int]:
    """ImageNet-1k index of each wnid (e.g. the 200 sorted folders of ImageNet-A/R)."""
    index = {w: i for i, w in enumerate(_imagenet_table()[0])}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise UserError(f"{unknown[0]} is not an ImageNet-1k wnid; the dataset folder is not ImageNet-A/R")
    return [index[w] for w in wnids]


def _subdirs(path: Path) -> list[str]:
    if not path.is_dir():
        raise UserError(f"{path} is missing; the dataset folder is incomplete: prepare the dataset again with --force")
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTS))


def _folder_items(image_root: Path, rel: str, folders: list[str], label_of, name_of) -> tuple[Item, ...]:
    items = []
    for folder in folders:
        prefix = f"{rel}/{folder}" if rel else folder
        for f in _images(image_root / prefix):
            items.append(Item(f"{prefix}/{f}", label_of(folder), name_of(folder)))
    return tuple(items)


# --------------------------------------------------------------------------- FGVC Aircraft


def read_fgvc_aircraft(ddir: Path) -> Split:
    """Official lists: ``variants.txt`` fixes the label order; ``images_variant_{train,val,test}.txt``
    hold ``<image id> <variant>``; images are ``images/<id>.jpg``."""
    ddir = Path(ddir)
    vpath = ddir / "variants.txt"
    if not vpath.is_file():
        raise UserError(f"fgvc_aircraft: {vpath} is missing; run `cpbench prepare fgvc_aircraft`")
    variants = [v.strip() for v in vpath.read_text(encoding="utf-8").splitlines() if v.strip()]
    label = {v: i for i, v in enumerate(variants)}
    parts = {}
    for part in ("train", "val", "test"):
        items = []
        for line in (ddir / f"images_variant_{part}.txt").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            img, _, variant = line.partition(" ")
            if variant not in label:
                raise UserError(f"fgvc_aircraft: variant {variant!r} of image {img} is not in variants.txt")
            items.append(Item(f"{img}.jpg", label[variant], variant))
        parts[part] = tuple(items)
    return Split(**parts)


# --------------------------------------------------------------------------- ImageNet family


def _name_of(names: dict[str, str], ddir: Path, folder: Path):
    """wnid -> class name; a wnid the names lack is an error naming it (the official readers index
    ``classnames[folder]`` and raise), never the wnid standing in as a class name."""
    def name(wnid: str) -> str:
        if wnid in names:
            return names[wnid]
        if (Path(ddir) / "classnames.txt").is_file():
            raise UserError(f"{Path(ddir) / 'classnames.txt'} has no line for wnid {wnid} (folder {folder / wnid}); "
                            f"add '{wnid} <class name>' or use CoOp's 1000-line classnames.txt")
        raise UserError(f"{wnid} (folder {folder / wnid}) is not an ImageNet-1k wnid; remove that folder")
    return name



def read_imagenet(ddir: Path) -> Split:
    """``images/train/<wnid>/`` and ``images/val/<wnid>/``; labels follow the sorted wnids; val is
    the test set (and stands in as val, as Dassl's ``val=test``)."""
    root = Path(ddir) / "images"
    wnids = _subdirs(root / "train")
    names = imagenet_classnames(ddir)
    label = {w: i for i, w in enumerate(wnids)}
    train = _folder_items(root, "train", wnids, label.__getitem__, _name_of(names, ddir, root / "train"))
    val_wnids = _subdirs(root / "val")
    extra = sorted(set(val_wnids) - set(label))
    if extra:
        raise UserError(f"imagenet: val folder {extra[0]} has no train folder; sort val into the train wnids")
    test = _folder_items(root, "val", val_wnids, label.__getitem__, _name_of(names, ddir, root / "val"))
    return Split(train=train, val=test, test=test)


def read_imagenetv2(ddir: Path) -> Split:
    """``imagenetv2-matched-frequency-format-val/<0..999>/``: folder i is ImageNet class i."""
    root = Path(ddir) / "imagenetv2-matched-frequency-format-val"
    names = list(imagenet_classnames(ddir).values()) if (Path(ddir) / "classnames.txt").is_file() else imagenet_names()
    folders = sorted((f for f in _subdirs(root) if f.isdigit()), key=int)
    test = _folder_items(root, "", folders, int, lambda f: names[int(f)])
    return Split(train=(), val=(), test=test)


def _wnid_reader(sub: str):
    def read(ddir: Path) -> Split:
        root = Path(ddir) / sub
        wnids = [w for w in _subdirs(root)]
        names = imagenet_classnames(ddir)
        label = {w: i for i, w in enumerate(wnids)}
        test = _folder_items(root, "", wnids, label.__getitem__, _name_of(names, ddir, root))
        return Split(train=(), val=(), test=test)
    read.__name__ = f"read_wnid_folders_{sub.replace('-', '_')}"
    return read


read_imagenet_sketch = _wnid_reader("images")
read_imagenet_a = _wnid_reader("imagenet-a")
read_imagenet_r = _wnid_reader("imagenet-r")


def folder_wnids(ddir: Path, image_dir: str) -> list[str]:
    """The sorted wnid folders of a Sketch/A/R dataset: label i is ``folder_wnids(...)[i]``."""
    return _subdirs(Path(ddir) / image_dir)
