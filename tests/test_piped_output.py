"""Output that is not a terminal (a pipe, a file, a log) is never wrapped or truncated (issue 29):
``cpbench list | cat`` prints every dataset name whole, prepare's summary is one line per dataset,
and stderr carries no blank lines from progress bars. Checked with ``$COLUMNS`` unset and set to
80 (rich would otherwise size a pipe to it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _piped(*args: str, columns: str | None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run([sys.executable, "-m", "cpbench", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def deep_root(tmp_path_factory):
    """A data root with a long path (a summary line longer than any terminal) and one toy dataset."""
    root = tmp_path_factory.mktemp("piped") / ("a-long-folder-name-" * 4) / "data"
    code, out, err = _piped("prepare", "toy_shapes", "--root", str(root), columns="80")
    assert code == 0, err
    return root, out, err


@pytest.mark.parametrize("columns", [None, "80", "40"])
def test_list_prints_every_dataset_name_whole(deep_root, columns):
    from cpbench.data import catalog

    code, out, err = _piped("list", "--root", str(deep_root[0]), columns=columns)
    assert code == 0, err
    assert "…" not in out, out
    cells = {c.strip() for line in out.splitlines() for c in line.split("│")}
    for name in catalog.all_specs(deep_root[0]):
        assert name in cells, (name, out)
    assert f"datasets (root: {deep_root[0]})" in out
    assert any(line.startswith("methods: ") and line.rstrip().endswith("zeroshot") for line in out.splitlines()), out


def test_prepare_summary_is_one_line_and_stderr_has_no_blank_lines(deep_root):
    root, out, err = deep_root
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"toy_shapes: prepared in {root}") and "new 10" in lines[0], out
    assert err.strip() and all(line.strip() for line in err.splitlines()), repr(err)


def test_run_log_starts_with_its_first_line_and_is_not_wrapped(deep_root, tmp_path):
    code, _, err = _piped("run", "zeroshot", "--backbone", "toy", "--dataset", "toy_shapes", "--seeds", "1",
                            "--device", "cpu", "--root", str(deep_root[0]), "--results", str(tmp_path / "res"),
                            columns="80")
    assert code == 0, err
    assert err.startswith("loading backbone toy") and all(line.strip() for line in err.splitlines()), repr(err)
    assert any(len(line) > 80 for line in err.splitlines()), err   # the job line is longer than 80: not wrapped
