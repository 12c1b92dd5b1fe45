"""Published numbers (``published.csv``, package data) with the setting each was measured in,
so ``--compare paper`` only puts a number next to a cell of the same setting.

Columns (one row per number; the key is everything but value, provenance and citation):

- ``protocol``: base2new | cross_dataset | dg | few_shot.
- ``method``: a cpbench method name (``cpbench list``; zero-shot CLIP is ``zeroshot``). A test
  fails for any other name.
- ``trained_on``: the training dataset for cross_dataset / dg (``imagenet``); empty for
  base2new / few_shot, which train on ``dataset`` itself.
- ``dataset``: a cpbench dataset name, or ``Average`` (the paper's average row; for base2new
  the HM of the averaged Base and New).
- ``average_over``: for ``Average`` rows, the named dataset set it averages (``DATASET_SETS``);
  empty otherwise. An Average is compared only with a report Average over exactly that set.
- ``field``: base | new | hm for base2new, ``all`` otherwise.
- ``shots``: training shots per class.
- ``backbone``, ``pretrained``: as cpbench rows record them (open_clip names: ``ViT-B-16``,
  ``openai`` for the papers' ViT-B/16 CLIP; Tip-Adapter's and CLIP-Adapter's tables are ``RN50``,
  CLIP-LoRA's figure also averages ``ViT-B-32`` and ``ViT-L-14``): a number is compared only with
  rows of its own backbone.
- ``value``: accuracy in percent.
- ``provenance``: a key of ``PROVENANCE`` (the label and legend the report prints).
- ``citation``: where exactly the number comes from (free text).

Numbers whose dataset list is not known (CPL's README averages are over 7 datasets, with the
authors' own CoCoOp re-run) use a set whose list is ``None``: they are kept, and never compared.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

COLUMNS = ("protocol", "method", "trained_on", "dataset", "average_over", "field", "shots", "backbone", "pretrained",
           "value", "provenance", "citation")
KEY = COLUMNS[:9]

# key -> (the label printed next to a number, the legend line that explains it)
PROVENANCE = {
    "authors-logs": ("authors' logs", "recomputed from the training logs shipped in the official repository"),
    "authors-readme": ("authors' README", "the README or project page of an official repository"),
    "authors-file": ("authors' results file", "a results file shipped in an official repository, as written "
                                              "(Tip-Adapter's exp.log)"),
    "other-readme": ("another method's README", "the README of another method's official repository reporting this "
                                                "method (KgCoOp's for ProGrad), not checked against its own paper"),
    "authors-figure": ("authors' figure", "read off a results figure of an official repository by pixel measurement "
                                          "(about ±0.1; the citation says how)"),
    "third-party-list": ("third-party list", "a results table collected by others (the Awesome-Prompt-Adapter-"
                                             "Learning-for-VLMs README), not checked against the paper"),
    "paper-recalled": ("paper, recalled", "the paper's table, recalled and arithmetically cross-checked (every HM and "
                                          "average recomputes), not read from the PDF"),
    "paper-unverified": ("paper, unverified", "recalled from the paper, no cross-check possible"),
}

PRE8 = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "dtd", "eurosat")


def dataset_sets() -> dict[str, tuple[str, ...] | None]:
    """Named dataset sets of published averages; ``None``: the list is unknown (never compared)."""
    from cpbench.data.specs import COOP_DATASETS, IMAGENET_VARIANTS

    return {
        "coop11": COOP_DATASETS,                                     # CoOp/CoCoOp's 11 (base2new, few-shot)
        "xd10": COOP_DATASETS[1:],                                   # cross-dataset targets (ImageNet excluded)
        "dg4": IMAGENET_VARIANTS,                                    # ImageNet-V2, -Sketch, -A, -R
        "pre8": PRE8,                                                # PRE's README averages
        "cpl7": None,                                                # CPL's README: 7 datasets, list not given
    }


@dataclass(frozen=True)
class Published:
    protocol: str
    method: str
    trained_on: str
    dataset: str
    average_over: str
    field: str
    shots: int
    backbone: str
    pretrained: str
    value: float
    provenance: str
    citation: str

    @property
    def label(self) -> str:
        return PROVENANCE[self.provenance][0]

    @property
    def setting(self) -> str:
        return f"{self.backbone}/{self.pretrained}"


def parse(text: str) -> list[Published]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"published.csv columns must be {', '.join(COLUMNS)}, got {reader.fieldnames}")
    out = []
    for r in reader:
        if r["provenance"] not in PROVENANCE:
            raise ValueError(f"unknown provenance {r['provenance']!r} in {r}")
        out.append(Published(**{**r, "shots": int(r["shots"]), "value": float(r["value"])}))
    return out


@lru_cache(maxsize=1)
def all_published() -> tuple[Published, ...]:
    return tuple(parse(resources.files("cpbench.results").joinpath("published.csv").read_text(encoding="utf-8")))


def for_method(protocol: str, method: str) -> list[Published]:
    return [p for p in all_published() if p.protocol == protocol and p.method == method]


def lookup(protocol: str, method: str, dataset: str, field: str = "all", shots: int = 16, *,
           backbone: str = "ViT-B-16", pretrained: str = "openai", trained_on: str | None = None,
           average_over: str | None = None) -> Published | None:
    """The number of one exact setting (defaults: the papers' ViT-B/16, ImageNet as the transfer
    source, the protocol's standard dataset set for an Average)."""
    if trained_on is None:
        trained_on = "imagenet" if protocol in ("cross_dataset", "dg") else ""
    if average_over is None:
        average_over = "" if dataset != "Average" else {"cross_dataset": "xd10", "dg": "dg4"}.get(protocol, "coop11")
    want = (protocol, method, trained_on, dataset, average_over, field, int(shots), backbone, pretrained)
    for p in all_published():
        if (p.protocol, p.method, p.trained_on, p.dataset, p.average_over, p.field, p.shots, p.backbone,
                p.pretrained) == want:
            return p
    return None
