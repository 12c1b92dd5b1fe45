"""Shared fixtures: a tiny random backbone, the real Caltech101 from ../shared (skipped when
absent), and a CLI runner that returns (exit code, stdout, stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPBENCH_SHARED", REPO.parent / "shared"))
CALTECH_SRC = SHARED / "datasets" / "caltech101"


@pytest.fixture(scope="session")
def tiny_backbone():
    from cpbench.models.backbone import load_backbone

    return load_backbone("tiny", "none")


@pytest.fixture(scope="session")
def caltech_root(tmp_path_factory):
    """Caltech101 prepared once from ../shared (real images + the real CoOp split file)."""
    if not (CALTECH_SRC / "101_ObjectCategories.tar.gz").exists():
        pytest.skip("../shared/datasets/caltech101 is not available")
    from cpbench.data import prepare as prep

    root = tmp_path_factory.mktemp("data")
    prep.prepare("caltech101", root, from_dir=CALTECH_SRC, shots=[16], seeds=[1, 2, 3])
    return root


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run ``python -m cpbench ARGS`` and return (returncode, stdout, stderr)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "cpbench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """Run ``cpbench ARGS`` in this process (no interpreter start): (exit code, stdout, stderr)."""

    def run(*args):
        from cpbench import cli

        monkeypatch.setattr(sys, "argv", ["cpbench", *map(str, args)])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run
