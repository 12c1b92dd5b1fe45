"""``cpbench report --format html``: one self-contained leaderboard page.

Everything is inline: CSS, a small script, the figures as ``data:image/png;base64`` URIs. No
network, no CDN, so the file can be mailed or opened offline. The page has:

- method and backbone filters (check boxes, a select) that hide rows, or columns in the wide
  base-to-new layout;
- every table of the report (each protocol, and the views asked for: ``--ci`` intervals,
  ``--compare-methods``, ``--per-class``, ``--cost``), with the cell texts of the markdown report;
  a click on a column header sorts the rows by it (again: the other way), Average rows stay last;
- the figures of ``plots.figures`` (base vs new with error bars, few-shot curves, per-class,
  paired differences) and the training curves (``curves.plot_curves``) when histories exist.

Cells carry their number in ``data-v`` (sorting) and their entry in ``data-e`` (filters).
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

from cpbench.results.table import Cell, Entry, Report, Table, isnan

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#22313f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d3dc;font-size:13px}
main{padding:8px 24px 40px;max-width:1500px}
#filters{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:8px 24px;
 display:flex;flex-wrap:wrap;gap:6px 18px;align-items:center;font-size:13px}
#filters label{white-space:nowrap}#filters .group{font-weight:600}
ul.notes{font-size:12.5px;color:#444;padding-left:18px}
nav{font-size:13px;margin:8px 0}nav a{margin-right:12px;color:#22577a}
section.tbl{margin:18px 0 26px}h2{font-size:16px;margin:22px 0 6px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;background:#fff;font-size:13px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
td,th{border:1px solid #dcdcdc;padding:3px 8px}td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#f1f3f5;font-weight:600}th[scope=row]{text-align:left;background:#fbfbfb;font-weight:500}
th.sort{cursor:pointer;user-select:none}th.sort:hover{background:#e3e8ee}
th.sort[data-dir=asc]::after{content:" \\25B2";font-size:10px}th.sort[data-dir=desc]::after{content:" \\25BC";font-size:10px}
tr.avg td,tr.avg th{font-weight:700;background:#f6f8fa}
td.missing{color:#999}td.ns{color:#6b6b6b}td.sig{color:#0b6e4f}
p.tnotes{font-size:12px;color:#555;max-width:1100px;margin:6px 0}
figure{margin:14px 0 24px}figure img{max-width:100%;border:1px solid #e2e2e2;background:#fff}
figcaption{font-size:12.5px;color:#444}
.hidden{display:none}
"""

SCRIPT = r"""
(function () {
  const entries = JSON.parse(document.getElementById('entries').textContent);
  const num = (td) => { const v = td && td.dataset.v; return v === undefined || v === '' ? NaN : parseFloat(v); };
  document.querySelectorAll('table.lb').forEach((table) => {
    table.querySelectorAll('th.sort').forEach((th) => {
      th.addEventListener('click', () => {
        const col = parseInt(th.dataset.col, 10);
        const dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
        table.querySelectorAll('th.sort').forEach((o) => { delete o.dataset.dir; });
        th.dataset.dir = dir;
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const fixed = rows.filter((r) => r.classList.contains('avg'));
        const moving = rows.filter((r) => !r.classList.contains('avg'));
        const key = (r) => r.cells[col];
        moving.sort((a, b) => {
          const x = num(key(a)), y = num(key(b));
          let c;
          if (isNaN(x) && isNaN(y)) c = key(a).textContent.localeCompare(key(b).textContent);
          else if (isNaN(x)) return 1;
          else if (isNaN(y)) return -1;
          else c = x - y;
          return dir === 'asc' ? c : -c;
        });
        moving.concat(fixed).forEach((r) => body.appendChild(r));
      });
    });
  });
  function apply() {
    const methods = new Set(Array.from(document.querySelectorAll('input.method:checked')).map((i) => i.value));
    const backbone = document.getElementById('backbone').value;
    const shown = (e) => { const x = entries[e]; return methods.has(x.method) && (backbone === '' || x.backbone === backbone); };
    document.querySelectorAll('[data-e]').forEach((el) => {
      el.classList.toggle('hidden', !shown(parseInt(el.dataset.e, 10)));
    });
  }
  document.querySelectorAll('#filters input, #filters select').forEach((el) => el.addEventListener('change', apply));
  apply();
})();
"""


def _registry(report: Report) -> list[Entry]:
    seen: dict[str, Entry] = {}
    for t in report.tables:
        for r in t.rows:
            for c in r.cells:
                if c.entry is not None and not c.difference and c.entry.key not in seen:
                    seen[c.entry.key] = c.entry
    return list(seen.values())


def _data_v(c: Cell) -> str:
    return "" if c.value is None or isnan(c.value) else repr(float(c.value))


def _td(c: Cell, text: str, index: dict[str, int]) -> str:
    cls = "missing" if text == "–" else ("sig" if c.paired is not None and c.paired.significant else
                                         "ns" if c.paired is not None else "")
    attrs = f' data-v="{_data_v(c)}"'
    if c.entry is not None and c.entry.key in index:
        attrs += f' data-e="{index[c.entry.key]}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{html.escape(text)}</td>"


def _table(t: Table, i: int, index: dict[str, int], cell_text) -> str:
    e = html.escape
    heading = t.title + (f" ({t.key})" if t.key else "")
    out = [f'<section class="tbl"><h2 id="t{i}">{e(heading)}</h2><div class="scroll">',
           f'<table class="lb" data-protocol="{e(t.protocol)}" data-kind="{e(t.kind)}">', "<thead>"]
    if t.groups:
        spans, col = [], 0
        for label, span in t.groups:
            ent = next((c.entry for r in t.rows[:1] for c in r.cells[col:col + span] if c.entry is not None), None)
            de = f' data-e="{index[ent.key]}"' if ent is not None and ent.key in index else ""
            spans.append(f'<th colspan="{span}"{de}>{e(label)}</th>')
            col += span
        out.append("<tr>" + "<th></th>" * len(t.row_header) + "".join(spans) + "</tr>")
    heads = list(t.row_header) + ([c.rsplit(" ", 1)[1] for c in t.columns] if t.groups else list(t.columns))
    first = t.rows[0].cells if t.rows else []
    cols = []
    for j, h in enumerate(heads):
        cell = first[j - len(t.row_header)] if j >= len(t.row_header) and first else None
        de = f' data-e="{index[cell.entry.key]}"' if (t.groups and cell is not None and cell.entry is not None
                                                     and cell.entry.key in index) else ""
        cols.append(f'<th class="sort" data-col="{j}"{de}>{e(h)}</th>')
    out += ["<tr>" + "".join(cols) + "</tr>", "</thead>", "<tbody>"]
    for r in t.rows:
        owners = {c.entry.key for c in r.cells if c.entry is not None and not c.difference}
        de = f' data-e="{index[next(iter(owners))]}"' if len(owners) == 1 and not t.groups and t.kind != "compare" \
            and next(iter(owners)) in index else ""
        cls = ' class="avg"' if r.average else ""
        out.append(f"<tr{cls}{de}>" + "".join(f'<th scope="row">{e(x)}</th>' for x in r.labels)
                   + "".join(_td(c, cell_text(c), index) for c in r.cells) + "</tr>")
    out += ["</tbody>", "</table></div>", f'<p class="tnotes">{e(" ".join(t.notes))}</p></section>']
    return "\n".join(out)


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figures(report: Report, curves=None) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(caption, PNG bytes) of every figure, and notes on what could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return [], ["Figures need matplotlib: pip install 'cpbench[plots]'."]
    from cpbench.results import plots

    made = [(caption, draw(None)) for _, caption, draw in plots.figures(report.tables)]
    notes = []
    if curves is not None and len(curves):
        from cpbench.results.curves import plot_curves

        with tempfile.TemporaryDirectory() as tmp:
            for p in plot_curves(curves, Path(tmp)):
                made.append((f"Training curves: {p.stem.removeprefix('curves-')}", p.read_bytes()))
    elif curves is not None:
        notes.append("No training curves: no checkpoints/<training_key>/history.parquet under the results folder.")
    return made, notes


def page(report: Report, cell_text, curves=None, title: str = "cpbench leaderboard") -> str:
    """The page; ``cell_text(cell)`` is the markdown renderer's cell text; ``curves``: the training
    histories (``curves.read_curves``) or None."""
    e = html.escape
    entries = _registry(report)
    index = {x.key: i for i, x in enumerate(entries)}
    methods = list(dict.fromkeys(x.method for x in entries))
    backbones = sorted({x.backbone_label for x in entries})
    figs, fig_notes = figures(report, curves)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<header><h1>{e(title)}</h1><p>{len(report.tables)} table(s), {len(methods)} method(s), "
             f"{len(backbones)} backbone(s); self-contained page written by cpbench report --format html</p></header>",
             '<div id="filters"><span class="group">Methods</span>'
             + "".join(f'<label><input type="checkbox" class="method" value="{e(m)}" checked> {e(m)}</label>'
                       for m in methods)
             + '<span class="group">Backbone</span><select id="backbone"><option value="">all</option>'
             + "".join(f'<option value="{e(b)}">{e(b)}</option>' for b in backbones) + "</select></div>",
             "<main>"]
    if report.notes or fig_notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in report.notes + fig_notes) + "</ul>")
    links = [f'<a href="#t{i}">{e(t.title + (f" ({t.key})" if t.key else ""))}</a>' for i, t in enumerate(report.tables)]
    if figs:
        links.append('<a href="#figures">Figures</a>')
    parts.append("<nav>" + " ".join(links) + "</nav>")
    parts += [_table(t, i, index, cell_text) for i, t in enumerate(report.tables)]
    if figs:
        parts.append('<section id="figures"><h2>Figures</h2>')
        parts += [f'<figure><img src="{_png(data)}" alt="{e(caption)}"><figcaption>{e(caption)}'
                  "</figcaption></figure>" for caption, data in figs]
        parts.append("</section>")
    registry = json.dumps([{"method": x.method, "backbone": x.backbone_label, "label": x.label} for x in entries])
    registry = registry.replace("</", "<\\/")  # no "</script>" inside the script element
    parts += ["</main>", f'<script type="application/json" id="entries">{registry}</script>',
              f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
