"""Every dataset cpbench knows: the built-in specs, the toy world and the custom datasets found
under a data root. ``specs.py`` defines the built-in ones and ``custom.py`` reads user datasets;
both only describe datasets, and this module is the one place that gathers them (so neither of
the two imports the other)."""

from __future__ import annotations

from cpbench.data.custom import custom_specs
from cpbench.data.specs import BUILTIN, DatasetSpec, Expected


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


def all_specs(root=None) -> dict[str, DatasetSpec]:
    """Every known dataset: the 15 built-in ones, the toy world, and (given a data root) the
    custom datasets made with ``cpbench prepare NAME --from-folder DIR`` under it."""
    specs = {s.name: s for s in BUILTIN}
    specs.update(_toy_specs())
    if root is not None:
        for name, spec in custom_specs(root).items():
            specs.setdefault(name, spec)
    return dict(sorted(specs.items()))
