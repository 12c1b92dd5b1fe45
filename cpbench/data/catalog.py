"""Every dataset cpbench knows: the built-in specs, the toy world and the custom datasets found
under a data root. ``specs.py`` defines the built-in ones and ``custom.py`` reads user datasets;
both only describe datasets, and this module is the one place that gathers them (so neither of
the two imports the other)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cpbench.data import folders
from cpbench.data.custom import custom_specs
from cpbench.data.specs import BUILTIN, CAPTIONED, DatasetSpec, Expected
from cpbench.errors import UserError


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
    try:
        from cpbench.data.caption_splits import read_karpathy
        from cpbench.data.toy.captions import ANNOTATIONS, TOY_CAPTIONS
    except ImportError:
        return out
    c = TOY_CAPTIONS
    out[c.name] = DatasetSpec(
        name=c.name, dassl_name="ToyCaptions", folder=c.name, image_dir="images", template="{}", kind="generated",
        task="retrieval", read_split=partial(read_karpathy, annotations=ANNOTATIONS, pool="train"),
        expected=Expected(train=c.n_train, test=c.n_test))
    return out


def all_specs(root=None) -> dict[str, DatasetSpec]:
    """Every known dataset: the 15 built-in ones, the image-caption ones (``task="retrieval"``),
    the toy world, and (given a data root) the
    custom datasets made with ``cpbench prepare NAME --from-folder DIR`` under it."""
    specs = {s.name: s for s in BUILTIN + CAPTIONED}
    specs.update(_toy_specs())
    if root is not None:
        for name, spec in custom_specs(root).items():
            specs.setdefault(name, spec)
    return dict(sorted(specs.items()))


def get_spec(name: str, root: Path | None = None) -> DatasetSpec:
    """The spec of a known dataset, or one line listing the known ones."""
    specs = all_specs(root)
    if name not in specs:
        known = ", ".join(specs)
        raise UserError(f"unknown dataset {name!r}; known datasets: {known} (see `cpbench list`)")
    return specs[name]


def prepared_names(root: Path, task: str = "classification") -> list[str]:
    """Prepared datasets of one task type (classification, or retrieval: image-caption datasets)."""
    return [name for name, spec in all_specs(root).items() if spec.task == task and folders.is_prepared(spec, root)]


LIST_COLUMNS = ("name", "prepared", "classes", "images", "disk", "template")


def listing(root: Path) -> list[tuple[str, ...]]:
    """``cpbench list``: one row (``LIST_COLUMNS``) per known dataset: whether it is prepared under
    ``root`` and, if so, its class and image counts and disk use from its prepare record."""
    rows = []
    for name, spec in all_specs(root).items():
        ddir = folders.dataset_dir(spec, root)
        ready = folders.is_prepared(spec, root)
        images = disk = classes = ""
        if ready:
            info = folders.read_marker(ddir)
            c = info.get("counts", {})
            classes = str(c.get("classes", ""))
            images = str(sum(c.get(k, 0) for k in ("train", "val", "test")))
            disk = info.get("disk") or folders.human_size(folders.disk_usage(ddir))
        rows.append((name, "yes" if ready else "", classes or str(spec.expected.classes or ""), images, disk,
                     spec.template))
    return rows
