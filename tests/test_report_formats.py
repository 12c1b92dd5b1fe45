"""Reports for every protocol and format.

- Published per-dataset Base/New of CoOp, CoCoOp, MaPLe and PromptSRC (written as results
  shards by hand, 3 seeds spread around each published mean) give back the published
  per-dataset HMs and Average rows to 0.01, through the CLI's json output.
- markdown, csv, latex (structure: balanced environments, column counts), html (parsed with
  html.parser), json all render the base2new/cross_dataset/dg/few_shot tables.
- --compare paper attaches the published number, its provenance label and the delta (the rows
  carry the configuration a default run records, so they are in the papers' setting).
- --plots writes non-empty PNGs.
"""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from cpbench.results import formats, published, report
from cpbench.results.store import ResultStore
from reporting import row as _hand_row
from reporting import run_cli as _cli

B2N = ("coop", "cocoop", "maple", "promptsrc")
DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


def _row(protocol, method, train, eval_, subset, shots, seed, acc):
    return _hand_row(protocol, method, train, eval_, subset, shots, seed, acc)


def _seeds(mean, spread):
    # three seeds whose mean is exactly ``mean`` (population std = spread * sqrt(2/3))
    return [mean - spread, mean, mean + spread]


def published_b2n_rows() -> list[dict]:
    rows = []
    for m in B2N:
        for d in DATASETS:
            for subset in ("base", "new"):
                p = published.lookup("base2new", m, d, subset)
                for seed, acc in enumerate(_seeds(p.value, 0.5), 1):
                    rows.append(_row("base2new", m, d, d, subset, 16, seed, acc))
    return rows


def other_rows() -> list[dict]:
    rows = []
    for seed in (1, 2):
        for d, acc in (("imagenet", 70.0), ("caltech101", 90.0), ("dtd", 40.0 + seed)):
            rows.append(_row("cross_dataset", "coop", "imagenet", d, "all", 16, seed, acc))
        for d, acc in (("imagenet", 70.0), ("imagenetv2", 60.0), ("imagenet_a", 50.0)):
            rows.append(_row("dg", "coop", "imagenet", d, "all", 16, seed, acc))
        for k in (1, 2, 4):
            for d in ("dtd", "eurosat"):
                rows.append(_row("few_shot", "coop", d, d, "all", k, seed, 40.0 + 5 * k + seed))
    rows.append(_row("few_shot", "coop", "dtd", "dtd", "all", 1, 3, 50.0))  # a 3rd seed on one cell only
    return rows


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "res")
    rows = published_b2n_rows() + other_rows()
    for i in range(0, len(rows), 50):
        store.write(f"hand-{i}", rows[i:i + 50])
    return tmp_path / "res"


def test_published_hms_and_averages_reproduced(results, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "report", "--results", results, "--format", "json",
                          "--protocol", "base2new")
    assert code == 0, err
    doc = json.loads(out)
    (table,) = doc["tables"]
    assert table["layout"] == "wide" and table["row_header"] == ["Dataset"]  # 4 methods: the grid still fits
    got = {(c["method"], c["dataset"], c["field"]): c for r in table["rows"] for c in r["cells"]}
    checked = 0
    for m in B2N:
        for d in DATASETS + ("Average",):
            for fld in ("base", "new", "hm"):
                p = published.lookup("base2new", m, d, fld)
                c = got[(m, d, {"base": "Base", "new": "New", "hm": "HM"}[fld])]
                assert c["mean"] == pytest.approx(p.value, abs=0.01), (m, d, fld)
                checked += 1
    assert checked == 4 * 12 * 3
    # the two the issue names
    assert [round(got[("coop", "Average", f)]["mean"], 2) for f in ("Base", "New", "HM")] == [82.69, 63.22, 71.66]
    assert [round(got[("promptsrc", "Average", f)]["mean"], 2) for f in ("Base", "New", "HM")] == [84.26, 76.10, 79.97]
    # std over the 3 seeds is the population std
    assert got[("coop", "dtd", "Base")]["std"] == pytest.approx(0.5 * (2 / 3) ** 0.5)


def test_transfer_and_few_shot_layouts():
    tabs = {(t.protocol, t.key): t for t in report.build(pd.DataFrame(other_rows())).tables}
    xd = tabs[("cross_dataset", "imagenet, 16-shot")]
    assert xd.columns == ["imagenet (source)", "caltech101", "dtd", "Average"]  # protocol order, source first
    (r,) = xd.rows
    assert r.labels == ("coop",) and r.cells[3].value == pytest.approx((90.0 + 41.5) / 2)  # targets only
    assert xd.average_over == ("caltech101", "dtd") and xd.trained_on == "imagenet"
    dg = tabs[("dg", "imagenet, 16-shot")]
    assert dg.columns == ["imagenet (source)", "imagenetv2", "imagenet_a", "Average"]
    assert dg.rows[0].cells[-1].value == pytest.approx(55.0)
    fs = tabs[("few_shot", "1-shot")]
    assert fs.columns == ["dtd", "eurosat", "Average"]
    dtd = fs.rows[0].cells[0]
    assert dtd.n == 3 and not dtd.flag and dtd.value == pytest.approx((46 + 47 + 50) / 3)
    assert fs.rows[0].cells[1].flag and fs.rows[0].cells[1].n == 2  # fewer seeds than dtd's 3
    assert {k for p, k in tabs if p == "few_shot"} == {"1-shot", "2-shot", "4-shot"}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tables, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("meta", "img", "input", "br", "link"):  # void elements: no end tag
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append(0)
        if tag in ("td", "th"):
            span = int(dict(attrs).get("colspan", 1))
            self.tables[-1][-1] += span

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with {self.stack[-3:]}")
        else:
            self.stack.pop()


def _latex_ok(tex: str) -> int:
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", tex)
    stack = []
    for kind, name in envs:
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, name
    assert not stack
    n = 0
    for block in re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", tex, re.S):
        spec, body = block
        for line in body.split("\n"):
            line = line.strip()
            if not line.endswith(r"\\"):
                continue
            cells = re.split(r"(?<!\\)&", line[:-2])
            width = sum(int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", line)) + \
                sum(1 for c in cells if "multicolumn" not in c)
            assert width == len(spec), line
            assert line.count("$") % 2 == 0, line
            n += 1
    # every special char escaped: no bare _ or % outside commands
    assert not re.search(r"(?<!\\)_", tex.replace(r"\_", ""))
    return n


@pytest.mark.parametrize("compare", [False, True])
def test_every_format_renders(results, compare, cli_here):
    extra = ("--compare", "paper") if compare else ()
    outs = {}
    for fmt in formats.FORMATS:
        code, out, err = cli_here("report", "--results", results, "--format", fmt, *extra)
        assert code == 0, err
        outs[fmt] = out
    md = outs["markdown"]
    for title in ("Base-to-new generalisation", "Cross-dataset transfer", "Domain generalisation",
                  "Few-shot classification (4-shot)", "**Average**", "71.66", " ± "):
        assert title in md
    assert ("(paper 71.66 [authors' README], Δ +0.00)" in md) == compare
    assert ("[paper, recalled]" in md) == compare
    assert ("Published numbers: authors' README = " in md) == compare  # the legend of the labels
    assert (md.count("--compare paper: compared ") == 1) == compare
    csv = pd.read_csv(io.StringIO(outs["csv"]))
    assert set(csv.protocol) == {"base2new", "cross_dataset", "dg", "few_shot"}
    assert set(csv.method) == set(B2N)
    hm = csv[(csv.method == "coop") & (csv.dataset == "Average") & (csv.field == "HM")]
    assert hm["mean"].round(2).tolist() == [71.66]
    if compare:
        assert hm["delta"].abs().max() < 0.01 and hm["provenance"].tolist() == ["authors' README"]
    doc = json.loads(outs["json"])
    assert len(doc["tables"]) == 1 + 1 + 1 + 3
    p = _Collect()
    p.feed(outs["html"])
    p.close()
    assert not p.errors and not p.stack
    assert len(p.tables) == 6
    b2n = p.tables[0]
    if compare:  # 4 methods with paper numbers are too wide for the grid: one row per (dataset, method)
        assert "Layout: one row per dataset and method" in md
        assert b2n[0] == b2n[1] == 2 + 3 and len(b2n) == 1 + 12 * 4  # header, (11 + Average) x 4 methods
    else:
        assert b2n[0] == b2n[1] == b2n[2] == 1 + 3 * 4 and len(b2n) == 2 + 12  # group row, header, 11 + Average
    for t in p.tables:
        assert len(set(t)) == 1  # every row as wide as the header
    assert _latex_ok(outs["latex"]) >= 12 + 2 + 2 + 3


def test_filters_and_errors(results, cli_here):
    code, out, _ = cli_here("report", "--results", results, "--methods", "coop",
                            "--datasets", "dtd", "--format", "csv")
    assert code == 0
    csv = pd.read_csv(io.StringIO(out))
    assert set(csv.method) == {"coop"}
    assert set(csv.dataset) <= {"dtd", "Average", "imagenet"}  # transfer tables keep their source
    assert "imagenet" in set(csv[csv.protocol == "cross_dataset"].dataset)
    for args, needle in ((("--format", "pdf"), "--format"), (("--protocol", "xd"), "unknown protocol"),
                         (("--compare", "x"), "--compare"), (("--methods", "nosuch"), "no results match")):
        code, out, err = cli_here("report", "--results", results, *args)
        assert code == 2 and needle in err and out == "", args


def test_plots_are_pngs(results, tmp_path, cli_here):
    code, _, err = cli_here("report", "--results", results, "--plots", tmp_path / "figs")
    assert code == 0, err
    for name in ("base_vs_new.png", "few_shot.png"):
        data = (tmp_path / "figs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_published_data_is_consistent():
    rows = published.all_published()
    # each published base2new HM recomputes from its Base and New (to rounding)
    for r in rows:
        if r.protocol == "base2new" and r.field == "hm":
            kw = dict(backbone=r.backbone, pretrained=r.pretrained, trained_on=r.trained_on,
                      average_over=r.average_over)
            b = published.lookup("base2new", r.method, r.dataset, "base", r.shots, **kw).value
            n = published.lookup("base2new", r.method, r.dataset, "new", r.shots, **kw).value
            assert report.hm(b, n) == pytest.approx(r.value, abs=0.011), r
