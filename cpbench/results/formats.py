"""Renderers for ``report.Table``: markdown, csv, latex, html, json. Numbers print with two
decimals; ``±`` std where a cell has more than one seed; ``†`` flags fewer seeds than the
table's most; with the paper comparison a cell also shows the published number, its
provenance label and the delta (ours − paper)."""

from __future__ import annotations

import html
import json
import math

import pandas as pd

from cpbench.results.report import Cell, Table

FORMATS = ("markdown", "csv", "latex", "html", "json")


def _num(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _cell_text(c: Cell, std: bool, pm: str = "±", dagger: str = "†", delta: str = "Δ") -> str:
    t = _num(c.value)
    if std and not c.derived and c.n > 1 and not math.isnan(c.std):
        t += f" {pm} {c.std:.2f}"
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


def markdown(tables: list[Table], std: bool = True) -> str:
    if not tables:
        return "_no results for the selected protocols/methods/datasets_\n"
    parts = []
    for t in tables:
        lines = [f"## {_heading(t)}", "", "| " + " | ".join([t.row_header] + t.columns) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
        for label, cells in t.rows:
            head = f"**{label}**" if label == "Average" else label
            lines.append("| " + " | ".join([head] + [_cell_text(c, std) for c in cells]) + " |")
        parts.append("\n".join(lines) + "\n\n" + " ".join(t.notes) + "\n")
    return "\n".join(parts)


def records(tables: list[Table]) -> list[dict]:
    out = []
    for t in tables:
        for label, cells in t.rows:
            for col, c in zip(t.columns, cells):
                out.append({"protocol": t.protocol, "table": t.key, "method": c.method, "dataset": c.dataset,
                            "field": c.field, "shots": c.shots,
                            "mean": None if math.isnan(c.value) else c.value,
                            "std": None if (c.derived or math.isnan(c.std)) else c.std, "n_seeds": c.n,
                            "fewer_seeds": c.flag, "derived": c.derived, "paper": c.paper,
                            "provenance": c.provenance or None, "delta": c.delta})
    return out


def csv(tables: list[Table]) -> str:
    cols = ["protocol", "table", "method", "dataset", "field", "shots", "mean", "std", "n_seeds", "fewer_seeds", "derived",
            "paper", "provenance", "delta"]
    return pd.DataFrame(records(tables), columns=cols).to_csv(index=False, float_format="%.4f")


def json_text(tables: list[Table]) -> str:
    doc = {"tables": [{"protocol": t.protocol, "title": t.title, "key": t.key, "row_header": t.row_header,
                       "columns": t.columns, "notes": t.notes,
                       "rows": [{"label": label, "cells": [r for r in records([Table(t.protocol, t.title, t.row_header,
                                                                                           t.columns, [], [(label, cells)], key=t.key)])]}
                                for label, cells in t.rows]} for t in tables]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX.get(ch, ch) for ch in s)
    for a, b in (("±", r"$\pm$"), ("†", r"$^\dagger$"), ("Δ", r"$\Delta$"), ("–", "--"), ("·", r"$\cdot$"),
                 ("−", "-")):
        s = s.replace(a, b)
    return s


def latex(tables: list[Table], std: bool = True) -> str:
    """One ``table`` environment per table (booktabs rules; needs ``\\usepackage{booktabs}``)."""
    parts = []
    for t in tables:
        ncol = 1 + len(t.columns)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\caption{" + tex_escape(_heading(t)) + "}",
                 r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule"]
        if t.groups:
            lines.append(" & ".join([""] + [r"\multicolumn{%d}{c}{%s}" % (span, tex_escape(g)) for g, span in t.groups])
                         + r" \\")
            start = 2
            lines.append("".join(r"\cmidrule(lr){%d-%d}" % (start + sum(s for _, s in t.groups[:i]),
                                                              start + sum(s for _, s in t.groups[:i + 1]) - 1)
                                 for i in range(len(t.groups))))
            heads = [c.split(" ", 1)[1] if " " in c else c for c in t.columns]
        else:
            heads = t.columns
        lines.append(" & ".join([tex_escape(t.row_header)] + [tex_escape(h) for h in heads]) + r" \\")
        lines.append(r"\midrule")
        for label, cells in t.rows:
            if label == "Average":
                lines.append(r"\midrule")
            texts = [tex_escape(_cell_text(c, std)) for c in cells]
            row = [r"\textbf{Average}" if label == "Average" else tex_escape(label)] + texts
            assert len(row) == ncol
            lines.append(" & ".join(row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}",
                  "% " + " ".join(t.notes).replace("\n", " ")]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def html_text(tables: list[Table], std: bool = True) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html>", "<head>", '<meta charset="utf-8">', "<title>cpbench report</title>",
             "<style>table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "td{text-align:right}th[scope=row]{text-align:left}tr.avg{font-weight:bold}</style>", "</head>", "<body>"]
    for t in tables:
        parts.append(f"<h2>{e(_heading(t))}</h2>")
        parts.append("<table>")
        parts.append("<thead>")
        if t.groups:
            parts.append("<tr><th></th>" + "".join(f'<th colspan="{span}">{e(g)}</th>' for g, span in t.groups) + "</tr>")
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in [t.row_header] + t.columns) + "</tr>")
        parts.append("</thead>")
        parts.append("<tbody>")
        for label, cells in t.rows:
            cls = ' class="avg"' if label == "Average" else ""
            parts.append(f"<tr{cls}><th scope=\"row\">{e(label)}</th>"
                         + "".join(f"<td>{e(_cell_text(c, std))}</td>" for c in cells) + "</tr>")
        parts.append("</tbody>")
        parts.append("</table>")
        parts.append(f"<p>{e(' '.join(t.notes))}</p>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render(tables: list[Table], fmt: str, std: bool = True) -> str:
    if fmt == "markdown":
        return markdown(tables, std)
    if fmt == "csv":
        return csv(tables)
    if fmt == "latex":
        return latex(tables, std)
    if fmt == "html":
        return html_text(tables, std)
    if fmt == "json":
        return json_text(tables)
    raise ValueError(fmt)
