"""What a dataset must offer a run, checked from its split file before any backbone is loaded:
at least two classes (and a new half for base-to-new), and as many training images per class as
``--shots`` asks for. ``prepare`` applies the same checks to what it prepares."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from cpbench.data import splits
from cpbench.errors import UserError


def require_classes(name: str, split: splits.Split, trained: bool = False) -> None:
    """At least two classes (evaluation-only datasets such as ImageNet-A have no training split);
    a dataset that is trained on needs two with training images, and base-to-new then has a base
    and a new half (ceil(n/2) base classes leave n - ceil(n/2) >= 1 new ones)."""
    labels = {it.label for it in (*split.train, *split.val, *split.test)}
    trainable = {it.label for it in split.train}
    if len(labels) < 2 or (trained and len(trainable) < 2):
        what = f"{len(trainable)} class(es) with training images" if len(labels) >= 2 else f"{len(labels)} class(es)"
        raise UserError(f"{name} has {what}; a benchmark needs at least 2 (and base-to-new needs a new class): "
                        "add classes to your data and prepare it again")


def smallest_class(items: Sequence[splits.Item]) -> tuple[str, int]:
    """(class name, training images) of the class with the fewest images."""
    counts = Counter((it.label, it.classname) for it in items)
    (_, name), n = min(counts.items(), key=lambda kv: (kv[1], kv[0][0]))
    return name, n


def require_shots(name: str, split: splits.Split, shots: Sequence[int], subset: str = "all") -> None:
    """Every class (of ``subset``) has at least max(shots) training images; otherwise say which
    class is short and what to pass instead. (Dassl silently trains such a class on fewer images.)"""
    k = max((s for s in shots if s > 0), default=0)
    if not k:
        return
    (train,), _ = splits.subsample_classes(subset, split.train)
    if not train:
        return
    cls, n = smallest_class(train)
    if n < k:
        raise UserError(f"--shots {k} is more than {name} has: class {cls!r} has only {n} training image(s) "
                        f"(its smallest class); use --shots {n} or fewer, or add images to that class")
