"""Evaluating a target whose classes are a subset of the training classes (DG: ImageNet -> A/R)
by keeping the logit columns of the target's classes from the source class bank, or, for a method
whose score of one class depends on the others (``Method.rebuild_on_target_classes``: Bayesian PL
averages a softmax over Monte-Carlo samples), by rebuilding it on the target's class names as the
official code does (``scorer_for``)."""

from __future__ import annotations

import torch

from cpbench.errors import UserError


class GatherColumns:
    """Evaluation view of a method over the source class bank that keeps only ``columns`` of
    its logits (in the target's label order); everything else is the method itself."""

    def __init__(self, method, columns: list[int]):
        self._method = method
        self._columns = torch.tensor(columns, dtype=torch.long)

    def __getattr__(self, name):
        return getattr(self._method, name)

    def logits_from_features(self, image_features, context):
        logits = self._method.logits_from_features(image_features, context)
        return logits[:, self._columns.to(logits.device)]

    def forward(self, images):
        logits = self._method(images)
        return logits[:, self._columns.to(logits.device)]

    __call__ = forward


def gather_columns(source_names: list[str], target_names: list[str], dataset: str) -> list[int]:
    """Source column of each target class, matched by class name (must be unambiguous)."""
    index: dict[str, int] = {}
    dup = set()
    for i, n in enumerate(source_names):
        if n in index:
            dup.add(n)
        index.setdefault(n, i)
    missing = [n for n in target_names if n not in index]
    if missing:
        raise UserError(f"{dataset}: classes {missing[:3]} are not among the training classes; "
                        "evaluate it with a protocol that rebuilds prompts (cross_dataset) instead of dg")
    ambiguous = [n for n in target_names if n in dup]
    if ambiguous:
        raise UserError(f"{dataset}: class names {ambiguous[:3]} occur twice among the training classes; "
                        "give the dataset a wnid map or evaluate it with --protocol cross_dataset")
    return [index[n] for n in target_names]


def target_columns(ds, tds, names: list[str], tnames: list[str]) -> list[int]:
    """ImageNet -> ImageNet-A/R: by wnid (the 200 sorted folders; ImageNet's names are not unique:
    two "missile", two "sunglasses"); anything else by class name."""
    if ds.name == "imagenet" and len(names) == 1000:
        try:
            from cpbench.data.prepare import repair_hint
            from cpbench.data.readers import folder_wnids, imagenet_indices
            from cpbench.data.specs import WNID_SUBSETS
        except ImportError:  # the ImageNet family is not available in this build
            WNID_SUBSETS = ()
        if tds.name in WNID_SUBSETS:
            cols = imagenet_indices(folder_wnids(tds.dir, tds.spec.image_dir))
            if len(cols) != len(tnames):
                raise UserError(f"{tds.name}: {len(cols)} wnid folders but {len(tnames)} classes in its split; "
                                f"{repair_hint(tds.spec, tds.dir.parent)}")
            return cols
    return gather_columns(names, tnames, tds.name)




def scorer_for(method, gather: bool, ds, tds, names: list[str], tnames: list[str]):
    """What evaluates a target: the method set to the target's class names (a rebuild), or, for a
    ``gather`` target whose classes differ from the training classes, a ``GatherColumns`` view of
    the method on the training classes. Keeping columns equals the rebuild only when each class's
    logit is independent of the other classes; a method that declares
    ``rebuild_on_target_classes`` (its output is a softmax average, so keeping 200 of 1000 columns
    weights the samples differently) is always rebuilt."""
    if gather and list(tnames) != list(names) and not method.rebuild_on_target_classes:
        columns = target_columns(ds, tds, list(names), list(tnames))
        method.set_classnames(list(names))
        return GatherColumns(method, columns)
    method.set_classnames(list(tnames))
    return method
