"""Reports never mix settings in one cell, and compare with the papers only like with like.

All rows are made by hand (``report_rows``), with the configuration a run with the given
``--set`` values records; nothing trains.

- Two configurations of one method are two entries with readable labels (``coop (epochs=1)``,
  ``coop (epochs=2)``) and never share a cell; a method's per-dataset defaults (CoOp: ImageNet 50
  epochs, the others 200) are one configuration. ``--config-hash`` / ``--latest`` keep one and the
  report says which. Two backbones, and imported vs trained rows, are separate entries too.
- Seed-less methods (zero-shot) are not flagged for fewer seeds, by their class attribute.
- Methods follow the papers' order (``registry.REPORT_ORDER``).
- The long (transposed) base-to-new layout: chosen when the grid is too wide, said in a note, the
  same records in every format.
- ``--compare paper``: toy rows get nothing and one line says why; an Average over a dataset set
  the paper did not average is not compared; published rows name registered methods (Bayesian PL).
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from cpbench.methods.registry import REPORT_ORDER, METHODS
from cpbench.results import formats, published, report
from cpbench.results.store import ResultStore
from reporting import b2n
from reporting import run_cli as _cli

ELEVEN = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101")


def _store(tmp_path, rows) -> str:
    store = ResultStore(tmp_path / "res")
    store.write("hand", rows)
    return str(tmp_path / "res")


def _b2n_cells(rep, shots: int = 16) -> dict:
    """(label, dataset, field) -> Cell of the base2new table."""
    (t,) = [t for t in rep.tables if t.protocol == "base2new" and t.key == f"{shots}-shot"]
    return {(c.label, c.dataset, c.field): c for r in t.rows for c in r.cells}


def _sweep_rows() -> list[dict]:
    """The issue's case: `--set epochs=1` for seeds 1 2, then `--set epochs=2` for seed 1."""
    return (b2n("coop", "dtd", [60.0, 62.0], [40.0, 42.0], sets=["epochs=1"])
            + b2n("coop", "dtd", [70.0], [50.0], sets=["epochs=2"], finished="2026-02-01T00:00:00"))


def test_two_configurations_are_two_entries(tmp_path, monkeypatch, capsys):
    res = _store(tmp_path, _sweep_rows())
    code, out, err = _cli(monkeypatch, capsys, "report", "--results", res, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    cells = {(c["entry"], c["dataset"], c["field"]): c for t in doc["tables"] for r in t["rows"] for c in r["cells"]}
    one, two = cells[("coop (epochs=1)", "dtd", "Base")], cells[("coop (epochs=2)", "dtd", "Base")]
    assert (one["mean"], one["n_seeds"], one["seeds"]) == (61.0, 2, [1, 2])   # epochs=1 alone
    assert (two["mean"], two["n_seeds"], two["seeds"]) == (70.0, 1, [1])      # epochs=2 alone
    assert one["config_hash"] != two["config_hash"]
    assert {c["entry"] for c in cells.values()} == {"coop (epochs=1)", "coop (epochs=2)"}
    notes = " ".join(doc["notes"])
    assert "coop (epochs=1) = epochs=1 [config " + one["config_hash"][:8] in notes
    assert "--config-hash PREFIX or --latest" in notes
    # markdown: two column groups with the labels
    code, md, _ = _cli(monkeypatch, capsys, "report", "--results", res)
    assert "coop (epochs=1) Base" in md and "coop (epochs=2) Base" in md and "61.00 ± 1.00" in md


def test_config_hash_and_latest_keep_one(tmp_path, monkeypatch, capsys):
    res = _store(tmp_path, _sweep_rows() + b2n("zeroshot", "dtd", [50.0], [55.0]))
    rep = report.build(ResultStore(res).read().frame)
    two = [c for c in _b2n_cells(rep).values() if c.label == "coop (epochs=2)"][0].config_hash
    for args in (("--config-hash", two[:6]), ("--latest",)):
        code, out, err = _cli(monkeypatch, capsys, "report", "--results", res, "--format", "csv", *args)
        assert code == 0, err
        csv = pd.read_csv(io.StringIO(out))
        assert set(csv.entry) == {"zeroshot", "coop"}  # one configuration left: the plain method name
        assert csv[(csv.entry == "coop") & (csv.field == "Base")]["mean"].tolist() == [70.0, 70.0]  # dtd, Average
        # the note (on stderr with csv) says what was kept
        assert f"coop: kept coop = epochs=2 [config {two[:8]}]; 1 other configuration(s) left out." in err
    code, out, err = _cli(monkeypatch, capsys, "report", "--results", res, "--config-hash", "ffffnomatch")
    assert code == 2 and "--config-hash ffffnomatch" in err and out == ""


def test_per_dataset_defaults_are_one_configuration():
    # CoOp's defaults: ImageNet 50 epochs, every other dataset 200 -> two hashes, one entry "coop"
    rows = b2n("coop", "imagenet", [76.0], [68.0]) + b2n("coop", "dtd", [79.0], [41.0])
    assert len({r["config_hash"] for r in rows}) == 2
    rep = report.build(pd.DataFrame(rows))
    cells = _b2n_cells(rep)
    assert {k[0] for k in cells} == {"coop"}
    assert cells[("coop", "Average", "Base")].value == pytest.approx(77.5)
    assert not any(n.startswith("Configurations") for n in rep.notes)  # the defaults need no legend


def test_backbones_and_imported_rows_never_share_a_cell():
    rows = (b2n("coop", "dtd", [70.0], [50.0]) + b2n("coop", "dtd", [40.0], [30.0], backbone="toy")
            + b2n("coop", "dtd", [80.0], [60.0], imported="official:0123456789abcdef"))
    old = b2n("coop", "dtd", [71.0], [51.0], seeds=[2])
    for r in old:  # a shard from before the imported column existed: trained rows
        del r["imported"]
    rep = report.build(pd.DataFrame(rows + old))
    cells = _b2n_cells(rep)
    assert cells[("coop (ViT-B-16/openai)", "dtd", "Base")].values == (70.0, 71.0)
    assert cells[("coop (toy/openai)", "dtd", "Base")].values == (40.0,)
    assert cells[("coop (ViT-B-16/openai, imported official)", "dtd", "Base")].values == (80.0,)
    assert any(n.startswith("Backbones: ViT-B-16/openai, toy/openai") for n in rep.notes)
    one = report.build(pd.DataFrame(b2n("coop", "dtd", [70.0], [50.0])))
    assert "Backbone: ViT-B-16/openai." in one.notes


def test_seedless_methods_are_not_flagged(monkeypatch):
    from cpbench.methods.zeroshot import ZeroShotCLIP

    rows = b2n("zeroshot", "dtd", [50.0], [55.0]) + b2n("coop", "dtd", [70.0, 72.0, 74.0], [50.0, 51.0, 52.0]) \
        + b2n("coop", "eurosat", [80.0, 81.0], [60.0, 62.0])
    cells = _b2n_cells(report.build(pd.DataFrame(rows)))
    assert not cells[("zeroshot", "dtd", "Base")].flag and cells[("zeroshot", "dtd", "Base")].seedless
    assert cells[("coop", "eurosat", "Base")].flag  # a seeded method with fewer seeds still is
    md = formats.render(report.build(pd.DataFrame(rows)), "markdown")
    assert "zeroshot: the result does not depend on the seed (never flagged)." in md
    # decided by the class attribute, not by the name
    monkeypatch.setattr(ZeroShotCLIP, "seed_dependent", True)
    from cpbench.results import entries

    entries._method_class.cache_clear()
    assert _b2n_cells(report.build(pd.DataFrame(rows)))[("zeroshot", "dtd", "Base")].flag


def test_methods_in_the_papers_order():
    names = ["linear_probe", "cpl", "promptsrc", "coop", "nosuchmethod", "maple", "zeroshot", "cocoop", "kgcoop"]
    rows = [r for m in names for r in b2n(m, "dtd", [50.0], [40.0])]
    t = report.build(pd.DataFrame(rows), report.ReportOptions(layout="wide")).tables[0]
    assert [g for g, _ in t.groups] == ["zeroshot", "coop", "cocoop", "kgcoop", "maple", "promptsrc", "cpl",
                                        "linear_probe", "nosuchmethod"]
    # no stale or repeated names (a method not listed yet sorts after the listed ones)
    assert set(REPORT_ORDER) <= set(METHODS) and len(set(REPORT_ORDER)) == len(REPORT_ORDER)


def test_long_layout_for_wide_tables(tmp_path, monkeypatch, capsys):
    methods = ["zeroshot", "coop", "cocoop", "kgcoop", "maple"]
    rows = [r for m in methods for d in ("dtd", "eurosat") for r in b2n(m, d, [50.0], [40.0])]
    res = _store(tmp_path, rows)
    out = {}
    for layout in ("auto", "wide", "long"):
        for fmt in formats.FORMATS:
            code, text, err = _cli(monkeypatch, capsys, "report", "--results", res, "--format", fmt, "--layout", layout)
            assert code == 0, err
            out[(layout, fmt)] = text
    auto = out[("auto", "markdown")]
    assert "| Dataset | Method | Base | New | HM |" in auto
    assert "| **Average** | maple | 50.00 | 40.00 | 44.44 |" in auto
    assert "Layout: one row per dataset and method (5 methods × Base/New/HM would be 15 columns)" in auto
    assert out[("long", "markdown")] == auto.replace(
        " Layout: one row per dataset and method (5 methods × Base/New/HM would be 15 columns); --layout wide keeps "
        "the dataset × method grid.", "")
    assert "| Dataset | zeroshot Base |" in out[("wide", "markdown")]
    # the same numbers in every layout; json says which layout it is
    assert out[("auto", "csv")] == out[("wide", "csv")] == out[("long", "csv")]
    assert json.loads(out[("auto", "json")])["tables"][0]["layout"] == "long"
    assert json.loads(out[("wide", "json")])["tables"][0]["row_header"] == ["Dataset"]
    assert r"\begin{tabular}{llrrr}" in out[("auto", "latex")] and ">Method</th>" in out[("auto", "html")]
    code, _, err = _cli(monkeypatch, capsys, "report", "--results", res, "--layout", "tall")
    assert code == 2 and "--layout must be one of auto, wide, long" in err


def test_compare_paper_on_toy_rows_attaches_nothing_and_says_why(tmp_path, monkeypatch, capsys):
    rows = [r for m in ("zeroshot", "coop") for r in b2n(m, "toy_shapes", [48.0], [64.0], backbone="toy")]
    res = _store(tmp_path, rows)
    for fmt in ("json", "csv"):
        code, out, err = _cli(monkeypatch, capsys, "report", "--results", res, "--format", fmt, "--compare", "paper")
        assert code == 0, err
        text = out + err
        lines = [ln for ln in text.splitlines() if "--compare paper" in ln]
        assert len(lines) == 1 and "nothing compared: backbone toy/openai (published: ViT-B-16/openai)" in lines[0]
    cells = [c for t in json.loads(_cli(monkeypatch, capsys, "report", "--results", res, "--format", "json",
                                        "--compare", "paper")[1])["tables"] for r in t["rows"] for c in r["cells"]]
    assert cells and all(c["paper"] is None and c["delta"] is None for c in cells)


def test_compare_paper_needs_the_papers_setting():
    dtd, pets = published.lookup("base2new", "coop", "dtd", "base"), published.lookup("base2new", "coop", "oxford_pets",
                                                                                        "base")
    rows = b2n("coop", "dtd", [dtd.value], [40.0]) + b2n("coop", "oxford_pets", [pets.value], [90.0])
    rows += b2n("cocoop", "dtd", [70.0], [50.0], sets=["epochs=2"])  # not the published configuration
    rep = report.build(pd.DataFrame(rows), report.ReportOptions(compare=True))
    cells = _b2n_cells(rep)
    assert cells[("coop", "dtd", "Base")].paper == dtd.value and cells[("coop", "dtd", "Base")].delta == 0
    assert cells[("coop", "dtd", "Base")].provenance == "paper, recalled"
    assert cells[("coop", "Average", "Base")].paper is None  # 2 datasets, not the papers' 11
    assert all(c.paper is None for (label, _, _), c in cells.items() if label.startswith("cocoop"))
    (line,) = [n for n in rep.notes if n.startswith("--compare paper")]
    assert line.startswith("--compare paper: compared 6 of ")
    assert "non-default settings in cocoop" in line
    assert "Average over 2 dataset(s), not a published dataset set (published averages: the 11 standard datasets)" \
        in line


def test_compare_paper_averages_only_over_the_same_dataset_set(monkeypatch):
    # all 11 datasets: the Average is compared; a published average over an unknown dataset list
    # (CPL's README: 7 datasets, the list not given) never is, even over 7 datasets
    rows = [r for d in ELEVEN for r in b2n("coopvpt", d, [80.0], [75.0])]
    cells = _b2n_cells(report.build(pd.DataFrame(rows), report.ReportOptions(compare=True)))
    bpl = published.lookup("base2new", "coopvpt", "Average", "hm")
    assert bpl is not None and cells[("coopvpt", "Average", "HM")].paper == bpl.value  # issue 18, bug 1
    assert cells[("coopvpt", "Average", "HM")].provenance == "paper, unverified"
    cpl = published.Published("base2new", "cpl", "", "Average", "cpl7", "base", 16, "ViT-B-16", "openai", 88.10,
                              "authors-readme", "CPL README, 7 datasets")
    monkeypatch.setattr(published, "all_published", lambda: (cpl,))
    seven = [r for d in ELEVEN[:7] for r in b2n("cpl", d, [88.1], [85.0])]
    rep = report.build(pd.DataFrame(seven), report.ReportOptions(compare=True))
    assert _b2n_cells(rep)[("cpl", "Average", "Base")].paper is None
    assert "published averages: CPL's 7 (unlisted) datasets" in " ".join(rep.notes)


def test_published_rows_are_well_formed():
    rows = published.all_published()
    sets = published.dataset_sets()
    keys = [tuple(getattr(r, k) for k in published.KEY) for r in rows]
    assert len(keys) == len(set(keys)), "one published number per setting"
    for r in rows:
        assert r.method in METHODS, f"{r.method!r} is not a registered method name: {r}"
        assert (r.dataset == "Average") == bool(r.average_over) and (not r.average_over or r.average_over in sets), r
        assert r.trained_on == ("imagenet" if r.protocol in ("cross_dataset", "dg") else ""), r
        assert r.field in (("base", "new", "hm") if r.protocol == "base2new" else ("all",)), r
        assert r.backbone and r.pretrained and 0 < r.value <= 100 and r.citation, r
    from cpbench.protocols import cross_dataset

    assert sets["coop11"] == ELEVEN and sets["xd10"] == cross_dataset.TARGETS
    with pytest.raises(ValueError, match="unknown provenance"):
        published.parse(",".join(published.COLUMNS) + "\nbase2new,coop,,dtd,,base,16,ViT-B-16,openai,1,README,x\n")


def test_report_compare_shows_the_bayesian_pl_and_lamm_published_numbers(tmp_path, monkeypatch, capsys):
    """Bayesian PL's numbers were stored under ``bpl``, which no method is called, so the report
    never showed them (every published row naming a registered method is checked in
    test_report_settings.py); LAMM's per-dataset numbers are new."""
    from conftest import run_main
    from reporting import row
    from cpbench.results import published
    from cpbench.results.store import ResultStore

    rows = []
    for d in ELEVEN:
        for seed in (1, 2, 3):
            rows += [row("base2new", "coopvpt", d, d, "base", 16, seed, 80.0),
                     row("base2new", "coopvpt", d, d, "new", 16, seed, 75.0)]
            for m in ("lamm", "coop_lamm", "maple_lamm"):
                rows.append(row("few_shot", m, d, d, "all", 16, seed, 80.0))
    ResultStore(tmp_path / "res").write("hand", rows)
    capsys.readouterr()
    assert run_main(monkeypatch, "report", "--results", tmp_path / "res", "--compare", "paper") == 0
    out_md = capsys.readouterr().out
    bpl = published.lookup("base2new", "coopvpt", "Average", "hm")
    assert bpl is not None and f"{bpl.value:.2f}" in out_md
    for m in ("lamm", "coop_lamm", "maple_lamm"):
        for d in ("dtd", "Average"):
            p = published.lookup("few_shot", m, d, "all", 16)
            assert p is not None and f"{p.value:.2f}" in out_md, (m, d)


def test_compare_paper_lines_up_each_backbone_with_its_own_numbers(tmp_path, monkeypatch, capsys):
    """Tip-Adapter's tables are RN50, CLIP-LoRA's figure ViT-B/16: rows of those backbones get
    those numbers (value and provenance label), rows of another backbone get none."""
    from reporting import row, run_cli

    from cpbench.results import published
    from cpbench.results.store import ResultStore

    rows = []
    for seed in (1, 2, 3):
        rows += [row("few_shot", "tip_adapter", "dtd", "dtd", "all", 16, seed, 60.0, backbone="RN50"),
                 row("few_shot", "tip_adapter_f", "dtd", "dtd", "all", 16, seed, 61.0, backbone="ViT-B-16"),
                 row("few_shot", "clip_lora", "dtd", "dtd", "all", 16, seed, 70.0),
                 row("base2new", "prograd", "dtd", "dtd", "base", 16, seed, 77.0),
                 row("base2new", "prograd", "dtd", "dtd", "new", 16, seed, 52.0)]
    ResultStore(tmp_path / "res").write("hand", rows)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", tmp_path / "res", "--compare", "paper",
                             "--format", "csv")
    assert code == 0, err
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(out))
    df = df[df["dataset"] == "dtd"]
    paper = {(r.method, r.backbone, r.field): (r.paper, r.provenance) for r in df.itertuples()}
    tip = published.lookup("few_shot", "tip_adapter", "dtd", "all", 16, backbone="RN50")
    lora = published.lookup("few_shot", "clip_lora", "dtd", "all", 16)
    pg = published.lookup("base2new", "prograd", "dtd", "new")
    assert tip.value == 60.93 and lora.value == 72.0 and pg.value == 52.35
    assert paper[("tip_adapter", "RN50", "accuracy")] == (tip.value, tip.label)
    assert paper[("clip_lora", "ViT-B-16", "accuracy")] == (lora.value, lora.label)
    assert paper[("prograd", "ViT-B-16", "New")][0] == pg.value
    assert pd.isna(paper[("tip_adapter_f", "ViT-B-16", "accuracy")][0])   # its published numbers are RN50
    assert published.lookup("few_shot", "tip_adapter_f", "dtd", "all", 16, backbone="RN50").value == 66.55
