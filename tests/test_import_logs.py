"""``cpbench import-logs DIR``: output folders of the official CoOp-family scripts (folder names as
their scripts write them, ``log.txt`` as Dassl's trainer prints it) become results rows marked
``imported = dassl-log:<Trainer>/<cfg>``; ``report`` shows them next to cpbench's rows, never in
the same cell; unknown layouts are one line naming the folder (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reporting import b2n, run_cli  # noqa: E402

from cpbench.results.store import ResultStore  # noqa: E402
from cpbench.state import dassl_logs  # noqa: E402


def dassl_log(acc: float, total: int, *, dataset="Caltech101", n_classes=50, val_acc: float | None = 99.9,
              vpt_type: str = "", epochs=10, finished=True) -> str:
    """A log.txt as Dassl's ``train.py`` + ``SimpleTrainer`` write it (arguments, config, dataset
    summary, per-epoch lines, a val evaluation, then the final test evaluation)."""
    correct = round(acc * total / 100)
    lines = ["Setting fixed seed: 1", "***************", "** Arguments **", "***************",
             "backbone: ", "seed: 1", "************", "** Config **", "************",
             "DATASET:", f"  NAME: {dataset}", "  NUM_SHOTS: 16", "  SUBSAMPLE_CLASSES: base",
             "MODEL:", "  BACKBONE:", "    NAME: ViT-B/16", "OPTIM:", f"  MAX_EPOCH: {epochs}",
             "TRAINER:", "  COCOOP:", "    PREC: fp16"]
    if vpt_type:
        lines += ["  VPT:", f"    VPT_TYPE: {vpt_type}"]
    lines += ["Collecting env info ...", "** System info **", "PyTorch version: 1.9.0+cu111",
              "Loading trainer: CoCoOp", "Loading dataset: Caltech101",
              "---------  ----------", "Dataset    Caltech101", f"# classes  {n_classes}",
              "# train_x  800", "# val      200", f"# test     {total:,}", "---------  ----------",
              "epoch [1/10] batch [20/800] time 0.1 (0.2) data 0.0 (0.0) loss 0.2 (0.3) lr 2.0e-03 eta 0:10:00"]
    if val_acc is not None:
        lines += ["Evaluate on the *val* set", "=> result", "* total: 200", "* correct: 199",
                  f"* accuracy: {val_acc:.1f}%", "* error: 0.1%", "* macro_f1: 99.9%"]
    if finished:
        lines += ["Finish training", "Deploy the last-epoch model", "Evaluate on the *test* set", "=> result",
                  f"* total: {total:,}", f"* correct: {correct:,}", f"* accuracy: {acc:.1f}%",
                  f"* error: {100 - acc:.1f}%", "* macro_f1: 95.0%", "Elapsed: 0:12:34"]
    return "\n".join(lines) + "\n"


def put(root: Path, rel: str, text: str, name: str = "log.txt") -> None:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding="utf-8")


B2N = {("caltech101", 1): (97.0, 94.0), ("caltech101", 2): (98.0, 93.0), ("caltech101", 3): (97.5, 94.5),
       ("oxford_pets", 1): (95.0, 97.0), ("oxford_pets", 2): (95.5, 97.5), ("oxford_pets", 3): (94.5, 96.0)}


@pytest.fixture
def official(tmp_path):
    """CoCoOp's base2new_train.sh / base2new_test.sh folders (3 seeds, 2 datasets), CoOp's main.sh
    few-shot folders and cross-dataset xd_train / xd_test folders."""
    out = tmp_path / "output"
    for (d, s), (base, new) in B2N.items():
        common = f"{d}/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed{s}"
        put(out, f"base2new/train_base/{common}", dassl_log(base, 1549 if d == "caltech101" else 1881))
        put(out, f"base2new/test_new/{common}", dassl_log(new, 916 if d == "caltech101" else 1788, val_acc=None))
    for s, acc in ((1, 91.0), (2, 92.0)):
        put(out, f"oxford_pets/CoOp/rn50_ep50_16shots/nctx16_cscFalse_ctpend/seed{s}", dassl_log(acc, 3669))
        put(out, f"imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed{s}", dassl_log(71.0 + s, 50000))
        put(out, f"evaluation/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/caltech101/seed{s}", dassl_log(93.0 + s, 2465))
        put(out, f"evaluation/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/imagenetv2/seed{s}", dassl_log(64.0 + s, 10000))
    return out


def test_the_official_layouts_import_as_marked_rows(official, tmp_path, cli_here):
    code, out, err = cli_here("import-logs", str(official), "--results", str(tmp_path / "res"))
    assert code == 0, err
    df = ResultStore(tmp_path / "res").read().frame
    assert set(df["imported"]) == {"dassl-log:CoCoOp/vit_b16_c4_ep10_batch1_ctxv1",
                                   "dassl-log:CoOp/rn50_ep50/nctx16_cscFalse_ctpend"}
    b2n = df[df["protocol"] == "base2new"].set_index(["eval_dataset", "seed", "subset"])["accuracy"]
    for (d, s), (base, new) in B2N.items():
        assert b2n[(d, s, "base")] == base and b2n[(d, s, "new")] == new   # the test block, not the val one
    row = df[(df["protocol"] == "base2new") & (df["eval_dataset"] == "caltech101") & (df["seed"] == 1)
             & (df["subset"] == "base")].iloc[0]
    assert (row["method"], row["shots"], row["n_test"], row["correct"], row["n_classes"]) == ("cocoop", 16, 1549, 1503, 50)
    assert (row["backbone"], row["epochs"], row["precision"], row["train_seconds"]) == ("ViT-B-16", 10, "fp16", 754.0)
    assert row["torch_version"] == "1.9.0+cu111"
    few = df[df["protocol"] == "few_shot"]
    assert set(few["method"]) == {"coop"} and sorted(few["accuracy"]) == [91.0, 92.0]
    assert set(few["backbone"]) == {"ViT-B-16"}   # from the printed config, not the cfg name
    xd = df[df["protocol"] == "cross_dataset"].set_index(["eval_dataset", "seed"])["accuracy"]
    assert xd[("imagenet", 1)] == 72.0 and xd[("caltech101", 2)] == 95.0
    dg = df[df["protocol"] == "dg"].set_index(["eval_dataset", "seed"])["accuracy"]
    assert dg[("imagenet", 2)] == 73.0 and dg[("imagenetv2", 1)] == 65.0
    assert len(df) == 12 + 2 + 4 + 4
    # importing again replaces, never duplicates
    assert cli_here("import-logs", str(official), "--results", str(tmp_path / "res"))[0] == 0
    assert len(ResultStore(tmp_path / "res").read().frame) == len(df)


def test_report_shows_imported_rows_next_to_trained_ones_never_averaged(official, tmp_path, monkeypatch, capsys):
    res = tmp_path / "res"
    # cpbench's own cocoop rows on the same cells, with other accuracies
    ResultStore(res).write("trained", b2n("cocoop", "caltech101", [90.0, 90.0, 90.0], [80.0, 80.0, 80.0])
                           + b2n("cocoop", "oxford_pets", [90.0, 90.0, 90.0], [80.0, 80.0, 80.0]))
    assert run_cli(monkeypatch, capsys, "import-logs", str(official), "--results", str(res))[0] == 0
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", str(res), "--protocol", "base2new",
                             "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    cells = [c for t in doc["tables"] for r in t["rows"] for c in r["cells"]
             if c["dataset"] == "caltech101" and c["field"] == "Base"]
    means = {c["imported"]: (c["mean"], c["n_seeds"]) for c in cells}
    assert means == {"": (90.0, 3), "dassl-log:CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": (97.5, 3)}
    code, md, err = run_cli(monkeypatch, capsys, "report", "--results", str(res), "--protocol", "base2new")
    assert code == 0, err
    assert "cocoop (imported dassl-log:CoCoOp/vit_b16_c4_ep10_batch1_ctxv1" in md and "no per-image predictions" in md
    base_imported = sum(B2N[("caltech101", s)][0] for s in (1, 2, 3)) / 3
    assert f"{base_imported:.2f}" in md and "90.00" in md   # each entry its own mean: 97.50 and 90.00


def test_compare_methods_and_ci_say_what_imported_rows_lack(official, tmp_path, monkeypatch, capsys):
    res = tmp_path / "res"
    ResultStore(res).write("trained", b2n("zeroshot", "caltech101", [90.0] * 3, [80.0] * 3)
                           + b2n("zeroshot", "oxford_pets", [90.0] * 3, [80.0] * 3))
    assert run_cli(monkeypatch, capsys, "import-logs", str(official), "--results", str(res))[0] == 0
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", str(res), "--protocol", "base2new", "--ci")
    assert code == 0, err
    assert "(accuracies imported from the official logs, which hold no per-image predictions)" in out
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", str(res), "--protocol", "base2new",
                             "--compare-methods", "cocoop", "zeroshot")
    assert code == 0, err
    assert "they hold no per-image predictions, so --ci, --compare-methods and --per-class" in out
    assert "+7.50" in out          # caltech101 base: 97.50 - 90.00, the seed means' difference


def test_bayesian_pl_logs_name_their_method_through_vpt_type(tmp_path, cli_here):
    out = tmp_path / "output"
    put(out, "base2new/train_base/dtd/shots_16/VPT/vit_b16_c4_ep10_batch1_ctxv1/seed1",
        dassl_log(80.0, 864, vpt_type="cocoopvpt"))
    put(out, "base/dtd/shots_4/LAMM/vit_b16_ep50_ctxv1/seed1", dassl_log(60.0, 1692))
    code, _, err = cli_here("import-logs", str(out), "--results", str(tmp_path / "res"))
    assert code == 0, err
    df = ResultStore(tmp_path / "res").read().frame.set_index("protocol")
    assert df.loc["base2new", "method"] == "cocoopvpt"
    assert (df.loc["few_shot", "method"], df.loc["few_shot", "shots"]) == ("lamm", 4)


def test_a_rerun_log_and_an_unfinished_run(tmp_path, cli_here):
    out = tmp_path / "output"
    rel = "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed1"
    put(out, rel, dassl_log(70.0, 864))
    put(out, rel, dassl_log(72.0, 864), name="log.txt-2024-01-02-10-00-00")   # Dassl's name for a re-run's log
    put(out, "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed2", dassl_log(0, 864, finished=False))
    code, _, err = cli_here("import-logs", str(out), "--results", str(tmp_path / "res"))
    assert code == 0, err
    assert "skipped" in err and "seed2" in err
    df = ResultStore(tmp_path / "res").read().frame
    assert list(df["accuracy"]) == [72.0]


@pytest.mark.parametrize("rel, says", [
    ("runs/dtd/seed1", "not an official output folder"),
    ("base2new/train_base/dtd/shots_16/MyTrainer/cfg/seed1", "trainer folder 'MyTrainer'"),
    ("base2new/train_base/mydata/shots_16/CoOp/cfg/seed1", "dataset folder 'mydata'"),
])
def test_an_unknown_layout_is_one_line_and_nothing_is_written(tmp_path, cli_here, rel, says):
    out = tmp_path / "output"
    put(out, "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed1", dassl_log(70.0, 864))
    put(out, rel, dassl_log(70.0, 864))
    code, _, err = cli_here("import-logs", str(out), "--results", str(tmp_path / "res"))
    assert code == 2
    assert says in err and rel.split("/")[-2] in err and "Traceback" not in err
    assert ResultStore(tmp_path / "res").read().frame.empty


def test_no_logs_is_one_line(tmp_path, cli_here):
    (tmp_path / "empty").mkdir()
    code, _, err = cli_here("import-logs", str(tmp_path / "empty"), "--results", str(tmp_path / "res"))
    assert code == 2 and "no Dassl log.txt" in err


def test_the_result_block_is_the_last_test_one():
    text = dassl_log(88.8, 1000, val_acc=12.3)
    assert dassl_logs.test_result(text).accuracy == 88.8
    assert dassl_logs.test_result(dassl_log(0, 10, finished=False)) is None
