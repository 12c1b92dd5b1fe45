"""Training you can see (issue 17): plain per-epoch log lines when the output is not a terminal,
a per-epoch history next to the checkpoints (one Parquet row per epoch, with the job's identity),
``read_curves`` for the report page, ``report --curves`` PNGs, and an ETA from the mean epoch time."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

EPOCH_LINE = re.compile(r"^  epoch (\d+)/(\d+)  loss (\d+\.\d{4})  lr (\d\.\d{3}e[-+]\d\d)  train acc (\d+\.\d)%  "
                        r"\d+\.\d s  eta \d+:\d\d:\d\d$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CoOp and one KgCoOp training (3 epochs each) through the CLI, output captured (not a terminal)."""
    import subprocess

    t = tmp_path_factory.mktemp("curves")
    make_caltech(t / "data", n_train=6)
    logs = {}
    for method in ("coop", "kgcoop"):
        proc = subprocess.run([sys.executable, "-m", "cpbench", "run", method, "--backbone", "tiny", "--pretrained",
                               "none", "--device", "cpu", "--shots", "6", "--seeds", "1", "--root", str(t / "data"),
                               "--results", str(t / "res"), "--threads", "1", "--set", "epochs=3", "batch_size=4",
                               "test_batch_size=8"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        logs[method] = proc.stderr
    return t, logs


def test_redirected_output_has_a_line_per_epoch_with_loss_and_lr(trained):
    from cpbench.config import TrainConfig
    from cpbench.engine.train import lr_at

    _, logs = trained
    lines = [m for m in map(EPOCH_LINE.match, logs["coop"].splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3] and {m.group(2) for m in lines} == {"3"}
    cfg = TrainConfig(epochs=3)
    assert [float(m.group(4)) for m in lines] == [float(f"{lr_at(e, cfg):.3e}") for e in range(3)]
    # a method with several loss terms names each one
    assert re.search(r"epoch 1/3  loss \d+\.\d{4} \(ce \d+\.\d{4}, kg \d+\.\d{4}\)", logs["kgcoop"]), logs["kgcoop"]


def test_history_parquet_one_row_per_epoch_with_identity(trained):
    import pandas as pd

    from cpbench.results.curves import IDENT, read_curves

    t, logs = trained
    files = sorted((t / "res" / "checkpoints").glob("*/history.parquet"))
    assert len(files) == 2
    coop = pd.read_parquet(next(f for f in files if f.parent.name.startswith("coop-")))
    assert list(coop["epoch"]) == [1, 2, 3] and set(coop["epochs"]) == {3}
    for col in (*IDENT, "lr", "loss", "loss_ce", "train_acc", "seconds"):
        assert col in coop.columns and coop[col].notna().all(), col
    row = coop.iloc[0]
    assert (row.method, row.train_dataset, row.train_subset, row.shots, row.seed, row.backbone, row.pretrained) == \
        ("coop", "caltech101", "base", 6, 1, "tiny", "none")
    shard = pd.read_parquet(t / "res" / "shards")
    assert row.config_hash == shard[shard.method == "coop"].config_hash.iloc[0]
    assert coop["loss"].tolist() == pytest.approx(coop["loss_ce"].tolist())  # CoOp: one term
    # 2 base classes x 6 shots = 12 training images: accuracies are multiples of 1/12
    assert all(abs(a * 12 / 100 - round(a * 12 / 100)) < 1e-9 for a in coop["train_acc"])
    # the log lines print the same numbers
    printed = [float(m.group(3)) for m in map(EPOCH_LINE.match, logs["coop"].splitlines()) if m]
    assert printed == [round(v, 4) for v in coop["loss"]]
    kg = pd.read_parquet(next(f for f in files if f.parent.name.startswith("kgcoop-")))
    assert kg["loss"].tolist() == pytest.approx((kg["loss_ce"] + kg["loss_kg"]).tolist())
    both = read_curves(t / "res")
    assert len(both) == 6 and set(both["method"]) == {"coop", "kgcoop"}


def test_report_curves_writes_a_png(trained, tmp_path, monkeypatch, capsys):
    from cpbench.cli import main

    t, _ = trained
    monkeypatch.setattr(sys, "argv", ["cpbench", "report", "--results", str(t / "res"), "--curves",
                                      str(tmp_path / "fig")])
    main()
    pngs = sorted((tmp_path / "fig").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {pngs[0]}" in capsys.readouterr().err


def test_report_curves_refuses_a_file(trained, tmp_path, monkeypatch, capsys):
    from cpbench.cli import main

    t, _ = trained
    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(sys, "argv", ["cpbench", "report", "--results", str(t / "res"), "--curves", str(tmp_path / "f")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--curves" in capsys.readouterr().err


def test_read_curves_without_any_is_empty_with_columns(tmp_path):
    from cpbench.results.curves import COLUMNS, read_curves

    frame = read_curves(tmp_path)
    assert frame.empty and list(frame.columns) == list(COLUMNS)


def test_eta_is_the_mean_epoch_time_times_what_is_left(monkeypatch):
    from cpbench.ui import progress
    from cpbench.engine.train import EpochStats

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    clock = progress.EpochClock()
    clock.start(10)
    now[0] += 2.0
    assert clock.batch(0, 1, 4) == pytest.approx(8.0 * 10 - 2.0)  # first epoch: from its batch rate
    for e, secs in enumerate((8.0, 12.0)):
        now[0] += secs
        left = clock.finished(EpochStats(e, 10, 0.1, 1.0, {"ce": 1.0}, 50.0, secs))
    assert left == pytest.approx(10.0 * 8)  # mean 10 s x 8 epochs left
    now[0] += 30.0  # a slow moment inside epoch 3 does not move the estimate beyond the elapsed time
    assert clock.batch(2, 1, 4) == pytest.approx(10.0 * 8 - 30.0)


def test_train_accuracy_counts_the_training_logits():
    from cpbench.engine.train import _correct

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert _correct(logits, torch.tensor([0, 1, 1])) == 2
    assert _correct(None, torch.tensor([0])) is None
    assert _correct(torch.zeros(3), torch.tensor([0, 1, 1])) is None


def test_log_reporter_prints_in_epoch_lines_every_n_batches(capsys):
    from rich.console import Console

    from cpbench.ui.progress import LOG_EVERY, LogReporter

    rep = LogReporter(Console(stderr=True, force_terminal=False))
    rep.phase("training coop on x (1 images, 2 epochs)", 2)
    for b in range(1, 2 * LOG_EVERY + 2):
        rep.batch(0, b, 2 * LOG_EVERY + 1, 1.5, 2e-3)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "batch" in ln]
    assert len(lines) == 2 and lines[0].startswith(f"  epoch 1/2 batch {LOG_EVERY}/") and "lr 2.000e-03" in lines[0]


def test_live_display_shows_epoch_loss_lr_accuracy_and_eta():
    import io

    from rich.console import Console

    from cpbench.engine.train import EpochStats
    from cpbench.ui.progress import RichReporter, make_reporter

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, color_system=None)
    rep = make_reporter(console)
    assert isinstance(rep, RichReporter)
    with rep:
        rep.phase("training kgcoop on x (12 images, 3 epochs)", 3)
        rep.batch(0, 1, 2, 1.25, 1e-5)
        rep.epoch(EpochStats(0, 3, 1e-5, 1.25, {"ce": 1.0, "kg": 0.25}, 58.3, 0.5))
        rep.batch(1, 1, 2, 1.5, 2e-3)
        rep.progress.refresh()
    shown = buf.getvalue()
    for needle in ("epoch 2/3", "loss 1.5000", "lr 2.00e-03", "last epoch: loss 1.2500 (ce 1.0000, kg 0.2500)", "train acc 58.3%",
                   "eta 0:00:0"):
        assert needle in shown, needle
