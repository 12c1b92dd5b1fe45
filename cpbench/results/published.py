"""Published numbers (``published.csv``, transcribed from the reference's methods.md §4), each
with its provenance label as the reference gives it:

- ``code``: read in the cited file (here: recomputed from logs shipped in the repo),
- ``cfg``: read from a yaml or script in the cited repo,
- ``README``: a README, project page or awesome-list table,
- ``recalled``: from memory of the paper, cross-checked arithmetically,
- ``UNVERIFIED``: memory only, no cross-check possible.

Method names are cpbench's registered names (``zeroshot`` = CLIP; Bayesian PL is ``coopvpt``, the
released config's variant); a test fails for any other. Datasets are cpbench names plus
``Average`` (the papers' average row over the 11 datasets: for base2new the HM of the averaged
Base and New) and ``Average(<set>)`` for an average over another dataset set (``pre8``: PRE's
README, 8 datasets; ``cpl7``: CPL's README, 7 unlisted datasets, with the authors' own CoCoOp
re-run), which no report row is named, so they are kept and never compared. ``field`` is
base | new | hm for base2new and ``all`` otherwise. LAMM's numbers are read off the README's
results figure (16-shot markers, pixel measurement, about ±0.1; the citation says so)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

PROVENANCE = ("code", "cfg", "README", "recalled", "UNVERIFIED")


@dataclass(frozen=True)
class Published:
    value: float
    provenance: str
    source: str


@lru_cache(maxsize=1)
def _table() -> dict[tuple, Published]:
    text = resources.files("cpbench.results").joinpath("published.csv").read_text(encoding="utf-8")
    out = {}
    for r in csv.DictReader(io.StringIO(text)):
        assert r["provenance"] in PROVENANCE, r
        out[(r["protocol"], r["method"], r["dataset"], r["field"], int(r["shots"]))] = Published(
            float(r["value"]), r["provenance"], r["source"])
    return out


def lookup(protocol: str, method: str, dataset: str, field: str = "all", shots: int = 16) -> Published | None:
    return _table().get((protocol, method, dataset, field, int(shots)))


def all_rows() -> list[dict]:
    return [dict(zip(("protocol", "method", "dataset", "field", "shots"), k), value=p.value,
                 provenance=p.provenance, source=p.source) for k, p in sorted(_table().items())]
