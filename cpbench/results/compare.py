"""``--compare paper``: put the published number next to each cell measured in the paper's setting,
and say once, in one line, why the other cells got none.

A cell matches a published number (``published.csv``) when all of these agree: protocol, method,
backbone and pretrained tag (no ``--weights`` file: its origin is unknown), the method's default
configuration (runtime-only settings such as ``num_workers`` aside), shots, the transfer source
(``trained_on``), the dataset and field, and for an Average the exact dataset set it averages.
Imported rows (the authors' own checkpoints) are compared like trained ones.
"""

from __future__ import annotations

from collections import defaultdict

from cpbench.results import published
from cpbench.results.entries import default_config
from cpbench.results.table import Cell, Table, isnan

FIELDS = {"Base": "base", "New": "new", "HM": "hm"}
SET_NAMES = {"coop11": "the 11 standard datasets", "xd10": "the 10 cross-dataset targets",
             "dg4": "the 4 ImageNet variants", "pre8": "PRE's 8 datasets", "cpl7": "CPL's 7 (unlisted) datasets"}


def _few(names, n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def match(t: Table, c: Cell) -> tuple[published.Published | None, tuple[str, str, frozenset]]:
    """The published number for ``c`` or None and why not: (kind, subject, what was published)."""
    e = c.entry
    cands = published.for_method(t.protocol, e.method)
    if not cands:
        return None, ("method", f"{e.method} ({t.protocol})", frozenset())
    same = [p for p in cands if p.backbone == e.backbone and p.pretrained == e.pretrained]
    if e.weights or not same:
        return None, ("backbone", e.backbone_label, frozenset(p.setting for p in cands))
    if not default_config(e):
        return None, ("config", e.label, frozenset())
    same = [p for p in same if p.shots == c.shots]
    if not same:
        return None, ("shots", f"{c.shots}-shot", frozenset(f"{p.shots}-shot" for p in cands))
    same = [p for p in same if p.trained_on == t.trained_on]
    if not same:
        return None, ("source", t.trained_on, frozenset(p.trained_on for p in cands))
    field = FIELDS.get(c.field, "all")
    if c.dataset == "Average":
        sets = published.dataset_sets()
        avg = [p for p in same if p.dataset == "Average"]
        hit = [p for p in avg if p.field == field and sets.get(p.average_over) is not None
               and set(sets[p.average_over]) == set(t.average_over)]
        if not hit:
            return None, ("average", f"{len(t.average_over)} dataset(s)",
                          frozenset(SET_NAMES.get(p.average_over, p.average_over) for p in avg) or frozenset({"none"}))
        return hit[0], ("", "", frozenset())
    hit = [p for p in same if p.dataset == c.dataset and p.field == field]
    if not hit:
        return None, ("dataset", c.dataset, frozenset())
    return hit[0], ("", "", frozenset())


# why a cell got no published number, most decisive first: {subjects} are ours, {published} the papers'
REASONS = {
    "backbone": "backbone {subjects} (published: {published})",
    "config": "non-default settings in {subjects} (published numbers use each method's defaults)",
    "shots": "{subjects} (published: {published})",
    "source": "trained on {subjects} (published: trained on {published})",
    "average": "Average over {subjects}, not a published dataset set (published averages: {published})",
    "dataset": "no published number on {subjects}",
    "method": "nothing published for {subjects}",
}


def attach(tables: list[Table]) -> list[str]:
    """Fills ``paper``/``provenance`` of matching cells; returns the report's note lines: the one
    line saying what was (not) compared and why, and the legend of the provenance labels used."""
    compared, total = 0, 0
    why: dict[str, tuple[set, set]] = defaultdict(lambda: (set(), set()))
    used = set()
    for t in tables:
        for r in t.rows:
            for c in r.cells:
                if isnan(c.value) or c.entry is None:
                    continue
                total += 1
                p, (kind, subject, pub) = match(t, c)
                if p is None:
                    why[kind][0].add(subject)
                    why[kind][1].update(pub)
                    continue
                c.paper, c.provenance = p.value, p.label
                compared += 1
                used.add(p.provenance)
    reasons = "; ".join(REASONS[k].format(subjects=_few(why[k][0]), published=_few(why[k][1])) for k in REASONS
                        if k in why)
    if compared == 0:
        line = "--compare paper: nothing compared: " + (reasons or "no results") + "."
    else:
        line = f"--compare paper: compared {compared} of {total} cells" + (f"; not compared: {reasons}." if reasons
                                                                           else ".")
    notes = [line]
    if used:
        notes.append("Published numbers: " + "; ".join(f"{published.PROVENANCE[k][0]} = {published.PROVENANCE[k][1]}"
                                                        for k in published.PROVENANCE if k in used) + ".")
    return notes
