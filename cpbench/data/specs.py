"""One entry per dataset: where it lives, where it comes from, how it is named and prompted.

Adding a dataset = adding one ``DatasetSpec`` to ``SPECS`` (and, for an odd layout, a reader
function). Nothing registers itself on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cpbench.data.fetch import Source


@dataclass(frozen=True)
class Expected:
    train: int | None = None
    val: int | None = None
    test: int | None = None
    classes: int | None = None
    base: int | None = None
    new: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str                       # CLI key, e.g. "caltech101"
    dassl_name: str                 # CoOp/Dassl class name, e.g. "Caltech101"
    folder: str                     # folder under the data root (CoOp layout)
    image_dir: str                  # folder (under ``folder``) that split paths are relative to
    template: str                   # zero-shot template, "{}" = class name
    sources: tuple[Source, ...] = ()
    split_file: str | None = None   # CoOp split json inside ``folder``
    expected: Expected = field(default_factory=Expected)
    val_is_test: bool = False       # ImageNet: the official val set is the test set
    kind: str = "download"          # download | generated | custom | manual
    read_split: Callable | None = None  # for layouts without a split json: (dataset_dir) -> Split
    notes: str = ""


CALTECH101 = DatasetSpec(
    name="caltech101",
    dassl_name="Caltech101",
    folder="caltech-101",
    image_dir="101_ObjectCategories",
    template="a photo of a {}.",
    split_file="split_zhou_Caltech101.json",
    sources=(
        Source(
            filename="caltech-101.zip",
            urls=(
                "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                "https://huggingface.co/datasets/HuggingFaceM4/Caltech-101/resolve/main/caltech-101.zip",
            ),
            md5="3138e1922a9193bfa496528edbbc45d0",
            extract=True,
            inner="caltech-101/101_ObjectCategories.tar.gz",
        ),
        Source(
            filename="split_zhou_Caltech101.json",
            urls=("https://drive.google.com/file/d/1hyarUivQE36mY6jSomru6Fjd-JzwcCzN/view?usp=sharing",),
            sha256="43ab95e88d2f6a32a11c4f8dc9f822c534e822f3dbbde2e248af5432d771a6fc",
        ),
    ),
    expected=Expected(train=4128, val=1649, test=2465, classes=100, base=50, new=50),
)


def _toy_specs() -> dict[str, DatasetSpec]:
    try:
        from cpbench.data.toy.datasets import TOY_DATASETS
    except ImportError:  # the toy world is optional at import time
        return {}
    out = {}
    for key, t in TOY_DATASETS.items():
        n = len(t.classnames)
        out[key] = DatasetSpec(
            name=key, dassl_name=t.dassl_name, folder=t.folder, image_dir="images",
            template=t.template, split_file=f"split_zhou_{t.dassl_name}.json", kind="generated",
            expected=Expected(train=n * t.n_train, val=n * t.n_val, test=n * t.n_test, classes=n,
                              base=(n + 1) // 2, new=n // 2),
        )
    return out


def all_specs() -> dict[str, DatasetSpec]:
    specs = {s.name: s for s in (CALTECH101,)}
    specs.update(_toy_specs())
    return dict(sorted(specs.items()))
