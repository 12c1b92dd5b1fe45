"""``cpbench run --tensorboard DIR``: one TensorBoard run per training key holding the scalars of
its ``history.parquet`` (loss and loss terms, lr, train accuracy, epoch seconds) and the job's final
accuracies; read back here with TensorBoard's own reader. Without the package, one line before
anything loads."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

RUN = ["run", "kgcoop", "--protocol", "few_shot", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu",
       "--shots", "2", "--seeds", "1", "--dataset", "caltech101", "--set", "epochs=3", "batch_size=2",
       "test_batch_size=4"]


def read_run(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_event_files_hold_the_history_and_the_final_accuracies(tmp_path, cli_here):
    pytest.importorskip("tensorboard", reason="the tensorboard package is an optional extra")
    make_caltech(tmp_path / "data")
    res, board = tmp_path / "res", tmp_path / "tb"
    args = [*RUN, "--root", str(tmp_path / "data"), "--results", str(res), "--tensorboard", str(board)]
    code, out, err = cli_here(*args)
    assert code == 0, err
    (hist_path,) = (res / "checkpoints").glob("*/history.parquet")
    history = pd.read_parquet(hist_path)
    run_dir = board / hist_path.parent.name                     # named by the training key
    got = read_run(run_dir)
    columns = {"loss": "train/loss", "lr": "train/lr", "train_acc": "train/acc", "seconds": "train/epoch_seconds",
               **{c: f"train/{c}" for c in history.columns if c.startswith("loss_")}}
    assert "train/loss_kg" in columns.values()                  # KgCoOp's loss terms are there too
    for col, tag in columns.items():
        want = [(int(e), float(v)) for e, v in zip(history["epoch"], history[col]) if not math.isnan(v)]
        assert [s for s, _ in got[tag]] == [s for s, _ in want] == [1, 2, 3]
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6)   # float32 in the file
    rows = pd.concat([pd.read_parquet(p) for p in (res / "shards").glob("*.parquet")])
    (row,) = rows.to_dict("records")
    assert got["few_shot/caltech101/all"] == [(3, pytest.approx(row["accuracy"], rel=1e-6))]

    # a second run finds the rows: nothing is written twice
    assert cli_here(*args)[0] == 0
    again = read_run(run_dir)
    assert [len(v) for v in again.values()] == [len(v) for v in got.values()]

    # results trained without --tensorboard fill their run from history.parquet
    board2 = tmp_path / "tb2"
    assert cli_here(*args[:-1], str(board2))[0] == 0
    assert read_run(board2 / hist_path.parent.name) == got


def test_without_the_package_it_is_one_line_before_anything_loads(tmp_path, cli_here, monkeypatch):
    from cpbench.results import tensorboard

    monkeypatch.setattr(tensorboard, "available", lambda: False)
    make_caltech(tmp_path / "data")
    code, out, err = cli_here(*RUN, "--root", str(tmp_path / "data"), "--results", str(tmp_path / "res"),
                              "--tensorboard", str(tmp_path / "tb"))
    assert code == 2 and "--tensorboard needs the tensorboard package" in err
    assert "loading backbone" not in err and not (tmp_path / "res").exists() and not (tmp_path / "tb").exists()
