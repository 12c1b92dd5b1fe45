"""The live training display on narrow terminals (issue 29): its line never exceeds the terminal's
width; the least important fields go first; the epoch, the loss and the ETA are always shown, the
learning rate and the training accuracy when there is room. Checked on a recorded rich console
and in a real 80x24 terminal (tmux)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from cpbench.engine.train import EpochStats
from cpbench.ui.progress import ESSENTIAL, Field, RichReporter, fit

EPOCH, LOSS, ETA = re.compile(r"epoch \d+/\d+"), re.compile(r"loss \d+\.\d{4}"), re.compile(r"eta \d+:\d\d:\d\d")


def _shown(width: int) -> list[str]:
    """The display's lines at ``width`` while training (after one epoch) and then while evaluating."""
    console = Console(width=width, force_terminal=True, record=True, file=io.StringIO(), color_system=None)
    rep = RichReporter(console)
    rep.phase("training coop base2new toy_shapes/base 16-shot seed 1 (160 images, 200 epochs)", 200)
    rep.batch(0, 3, 5, 1.2345, 0.002)
    rep.epoch(EpochStats(0, 200, 0.002, 1.1, {"ce": 1.0, "kg": 0.1}, 55.5, 0.3))
    rep.batch(1, 2, 5, 1.0345, 0.002)
    console.print(rep.progress.get_renderable())
    rep.phase("evaluating on toy_shapes/base (400 images)")
    rep.advance(3, 10)
    console.print(rep.progress.get_renderable())
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [200, 120, 100, 80, 72, 60])
def test_the_line_fits_and_keeps_epoch_loss_and_eta(width):
    train, evaluate = _shown(width)
    assert cell_len(train) <= width and cell_len(evaluate) <= width, (train, evaluate)
    for pattern in (EPOCH, LOSS, ETA):
        assert pattern.search(train), (width, train)
    assert "3/10" in evaluate and ETA.search(evaluate), (width, evaluate)


def test_lr_and_training_accuracy_at_80_columns_and_everything_when_wide():
    train = _shown(80)[0]
    assert "lr 2.00e-03" in train and "train acc 55.5%" in train, train
    wide = _shown(250)[0]
    for needle in ("training coop base2new toy_shapes/base 16-shot seed 1 (160 images, 200 epochs)", "━",
                   "last epoch: loss 1.1000 (ce 1.0000, kg 0.1000)", "lr 2.00e-03", "train acc 55.5%"):
        assert needle in wide, (needle, wide)


def test_the_least_important_fields_go_first():
    fields = [Field("a" * 20, 1), Field("b" * 10, 5), Field("", 3, bar=True), Field("c" * 8, ESSENTIAL),
              Field("d" * 30, 4, shortest=12)]
    assert [f.text for f, _ in fit(fields, 200)] == [f.text for f in fields]
    kept = fit(fields, 50)   # c 8 + b 10 + d 30 + gaps 4 = 52 > 50: d is cut to what is left
    assert [(f.text[:1], w) for f, w in kept] == [("b", 10), ("c", 8), ("d", 28)]
    kept = fit(fields, 25)   # d cannot be cut below 12 and the bar needs 10: neither fits the 3 left
    assert [(f.text[:1], w) for f, w in kept] == [("b", 10), ("c", 8)]
    kept = fit(fields, 33)   # the bar takes the 13 left (its least is 10)
    assert [(f.text[:1] or "bar", w) for f, w in kept] == [("b", 10), ("bar", 11), ("c", 8)]
    assert [f.text for f, _ in fit(fields, 3)] == ["c" * 8]   # the essential field stays, cut at the edge


# ----------------------------------------------------------------------------- a real terminal
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux): the "
                                                         "80x24 terminal test needs it")
def test_an_80x24_terminal_shows_epoch_loss_and_eta(tmp_path):
    """``cpbench run coop`` in a tmux pane of 80x24: while it trains, one line of the pane shows the
    epoch, the loss and the ETA (a line wider than the pane would wrap and split them)."""
    from cpbench.data import prepare as prep

    toy_root = tmp_path / "data"
    prep.prepare("toy_shapes", toy_root)
    socket, session = f"cpbench-test-{uuid.uuid4().hex[:8]}", "run"
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = (f"{sys.executable} -m cpbench run coop --backbone toy --dataset toy_shapes --seeds 1 --device cpu "
           f"--threads 1 --root {toy_root} --results {tmp_path / 'res'}; sleep 60")
    tmux = ["tmux", "-L", socket]
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    "-e", f"PYTHONPATH={env['PYTHONPATH']}", "-e", f"CPBENCH_CACHE={env.get('CPBENCH_CACHE', '')}",
                    "sh", "-c", cmd], check=True, env=env, cwd=tmp_path)
    seen, found = "", None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and found is None:
            time.sleep(0.3)
            seen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            found = next((ln for ln in seen.splitlines() if EPOCH.search(ln) and LOSS.search(ln) and ETA.search(ln)),
                         None)
            if "result row(s)" in seen or "error" in seen:
                break
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert found is not None, seen
    assert "lr " in found and cell_len(found.rstrip()) <= 80, found
