"""Renderers for ``table.Report``: markdown, csv, latex, html, json. Numbers print with two
decimals; ``±`` std where a cell has more than one seed (not for seed-less methods, whose seeds
repeat one result); ``†`` flags fewer seeds than the table's most; with the paper comparison a
cell also shows the published number, its provenance label and the delta (ours − paper); with
``--ci`` the 95 % interval in brackets (``‡``: over the test images only, one seed); a paired
difference prints signed, with its interval, p, Holm p (per-dataset cells), ``significant`` /
``n.s.`` or ``untestable against seed noise (1 seed)``, and McNemar's p combined over the seeds.
A p known only as a bound prints ``p < …`` (in csv/json the text ``"< 0.001"``, never 0). The
report's notes (backbone, what the labels stand for, selections, what was compared) come first;
csv has no place for them, so the CLI prints them on stderr. ``html`` is the self-contained leaderboard page (``leaderboard.py``)."""

from __future__ import annotations

import json
import math

import pandas as pd

from cpbench.results.significance import IMAGES_ONLY, ONE_SEED, p_text
from cpbench.results.table import RECORD_FIELDS, Cell, Report, Table, record, records

FORMATS = ("markdown", "csv", "latex", "html", "json")


def _num(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return f"{0.0 if abs(x) < 0.005 else x:+.2f}"  # no "-0.00"


def _difference_text(c: Cell) -> str:
    if c.value is None or math.isnan(c.value):
        return "–"
    t = _signed(c.value)
    p = c.paired
    if p is not None and not p.testable:
        t += f", untestable against seed noise (1 seed); test images only [{_signed(p.low)}, {_signed(p.high)}]"
    elif p is not None:
        t += f" [{_signed(p.low)}, {_signed(p.high)}], {p_text(p.p, p.p_floor)}"
        if p.p_adjusted is not None:
            t += f" (Holm {p_text(p.p_adjusted, p.adjusted_floor)})"
        t += ", significant" if p.significant else ", n.s."
    if c.mcnemar is not None:
        m = c.mcnemar
        t += f"; McNemar {p_text(m.p, m.p_floor)} ({m.a_only}/{m.b_only})"
    return t


def _cell_text(c: Cell, std: bool, pm: str = "±", dagger: str = "†", delta: str = "Δ") -> str:
    if c.difference:
        return _difference_text(c)
    t = _num(c.value, c.digits)
    if std and not c.derived and not c.seedless and c.n > 1 and not math.isnan(c.std):
        t += f" {pm} {c.std:.2f}"
    if c.ci is not None:
        t += f" [{c.ci[0]:.2f}, {c.ci[1]:.2f}]" + (IMAGES_ONLY if c.ci_kind == ONE_SEED else "")
    if c.flag:
        t += f" {dagger}"
    if c.paper is not None:
        d = c.delta
        if d is not None and abs(d) < 0.005:
            d = 0.0  # no "-0.00"
        t += f" (paper {c.paper:.2f} [{c.provenance}]" + (f", {delta} {d:+.2f})" if d is not None else ")")
    return t


def _heading(t: Table) -> str:
    return t.title + (f" ({t.key})" if t.key else "")


def _labels(labels: tuple[str, ...], average: bool, bold) -> list[str]:
    return [bold(x) if average and i == 0 else x for i, x in enumerate(labels)]


def _md(x: str) -> str:
    return x.replace("|", "\\|")


def _sub_headers(t: Table) -> list[str]:
    """Column headers under the group row (``Base``/``New``/``HM``), or the full names."""
    return [c.rsplit(" ", 1)[1] for c in t.columns] if t.groups else list(t.columns)


def markdown(report: Report, std: bool = True) -> str:
    if not report.tables:
        return "_no results for the selected protocols/methods/datasets_\n"
    parts = ["\n".join(f"- {n}" for n in report.notes) + "\n"] if report.notes else []
    for t in report.tables:
        lines = [f"## {_heading(t)}", "", "| " + " | ".join(_md(h) for h in t.row_header + t.columns) + " |",
                 "|" + "|".join(["---"] * len(t.row_header) + ["---:"] * len(t.columns)) + "|"]
        for r in t.rows:
            lines.append("| " + " | ".join(_labels(tuple(_md(x) for x in r.labels), r.average, lambda x: f"**{x}**")
                                           + [_cell_text(c, std) for c in r.cells]) + " |")
        parts.append("\n".join(lines) + "\n\n" + " ".join(t.notes) + "\n")
    return "\n".join(parts)


def _flat(rec: dict) -> dict:
    return {**rec, "seeds": " ".join(str(s) for s in rec["seeds"]),
            "values": " ".join(f"{v:.4f}" for v in rec["values"])}


def csv(report: Report) -> str:
    return pd.DataFrame([_flat(r) for r in records(report.tables)], columns=RECORD_FIELDS).to_csv(
        index=False, float_format="%.4f")


def json_text(report: Report) -> str:
    doc = {"notes": report.notes,
           "tables": [{"protocol": t.protocol, "kind": t.kind, "title": t.title, "key": t.key, "layout": t.layout,
                       "row_header": t.row_header, "columns": t.columns, "groups": [list(g) for g in t.groups],
                       "average_over": list(t.average_over), "trained_on": t.trained_on, "notes": t.notes,
                       "rows": [{"labels": list(r.labels), "average": r.average,
                                 "cells": [record(t, c) for c in r.cells]} for r in t.rows]} for t in report.tables]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX.get(ch, ch) for ch in s)
    for a, b in (("±", r"$\pm$"), ("†", r"$^\dagger$"), ("‡", r"$^\ddagger$"), ("Δ", r"$\Delta$"), ("–", "--"),
                 ("·", r"$\cdot$"), ("−", "-")):
        s = s.replace(a, b)
    return s


def latex(report: Report, std: bool = True) -> str:
    """One ``table`` environment per table (booktabs rules; needs ``\\usepackage{booktabs}``);
    the report's notes as comment lines first."""
    parts = ["\n".join("% " + n for n in report.notes)] if report.notes else []
    for t in report.tables:
        nlab = len(t.row_header)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\caption{" + tex_escape(_heading(t)) + "}",
                 r"\begin{tabular}{" + "l" * nlab + "r" * len(t.columns) + "}", r"\toprule"]
        if t.groups:
            lines.append(" & ".join([""] * nlab + [r"\multicolumn{%d}{c}{%s}" % (span, tex_escape(g))
                                                   for g, span in t.groups]) + r" \\")
            start = nlab + 1
            lines.append("".join(r"\cmidrule(lr){%d-%d}" % (start + sum(s for _, s in t.groups[:i]),
                                                              start + sum(s for _, s in t.groups[:i + 1]) - 1)
                                 for i in range(len(t.groups))))
        lines.append(" & ".join([tex_escape(h) for h in t.row_header + _sub_headers(t)]) + r" \\")
        lines.append(r"\midrule")
        first_average = True
        for r in t.rows:
            if r.average and first_average:
                lines.append(r"\midrule")
                first_average = False
            row = _labels(tuple(tex_escape(x) for x in r.labels), r.average, lambda x: r"\textbf{%s}" % x)
            row += [tex_escape(_cell_text(c, std)) for c in r.cells]
            assert len(row) == nlab + len(t.columns)
            lines.append(" & ".join(row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}",
                  "% " + " ".join(t.notes).replace("\n", " ")]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def html_text(report: Report, std: bool = True, curves=None) -> str:
    """The self-contained leaderboard page (``leaderboard.py``), with the markdown cell texts."""
    from cpbench.results import leaderboard

    return leaderboard.page(report, lambda c: _cell_text(c, std), curves=curves)


def render(report: Report, fmt: str, std: bool = True, curves=None) -> str:
    """``curves``: training histories (``curves.read_curves``) for the html page, or None."""
    if fmt == "markdown":
        return markdown(report, std)
    if fmt == "csv":
        return csv(report)
    if fmt == "latex":
        return latex(report, std)
    if fmt == "html":
        return html_text(report, std, curves)
    if fmt == "json":
        return json_text(report)
    raise ValueError(fmt)
