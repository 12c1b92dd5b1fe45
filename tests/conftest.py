"""Shared fixtures: a tiny random backbone, the real Caltech101 from ../shared (skipped when
absent), and a CLI runner that returns (exit code, stdout, stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before torch loads (its OpenMP runtime reads this once): waiting threads sleep, as the CLI makes
# them (cpbench/threads.py). The suite runs in pytest-xdist workers that share the cores, and
# spinning threads on shared cores slow every test several times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Derived files (feature caches) go to the user's cache folder (cpbench/paths.py): the suite keeps its
# own, so it never reads or fills the cache of the person running it.
if "CPBENCH_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["CPBENCH_CACHE"] = tempfile.mkdtemp(prefix="cpbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CPBENCH_CACHE"], True)  # views shards are megabytes a run

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPBENCH_SHARED", REPO.parent / "shared"))
CALTECH_SRC = SHARED / "datasets" / "caltech101"


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may use (affinity, cgroup quota), at most 4 (each
    holds its own torch and fixtures). Modules stay whole on one worker (``--dist loadfile``), so
    module-scoped fixtures that train run once."""
    from cpbench.threads import available_cpus

    return max(1, min(4, available_cpus()[0]))


def pytest_configure(config):
    """Each xdist worker takes its share of the CPUs this process may use (never more in total)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        from cpbench.threads import available_cpus

        torch.set_num_threads(max(1, available_cpus()[0] // workers))


@pytest.fixture(scope="session")
def tiny_backbone():
    from cpbench.models.backbone import load_backbone

    return load_backbone("tiny", "none")


@pytest.fixture(scope="module")
def deep_backbone():
    """A tiny random CLIP with 4 layers per tower (deep prompts at layers 1..3; one per test module)."""
    import open_clip

    from cpbench.models.backbone import OPENAI_MEAN, OPENAI_STD, Backbone, BackboneSpec, Preprocess

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(embed_dim=48, vision_cfg=dict(image_size=32, layers=4, width=64, patch_size=8,
                                                              head_width=32),
                                text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=4))
    return Backbone(clip, 32, Preprocess(32, OPENAI_MEAN, OPENAI_STD), BackboneSpec("deep-tiny", "none"))


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


def run_main(monkeypatch, *argv: str) -> int:
    """``cpbench ARGV`` through ``cli.main`` in this process; its exit code (0 when it returns)."""
    from cpbench.cli import main

    monkeypatch.setattr(sys, "argv", ["cpbench", *map(str, argv)])
    monkeypatch.setenv("COLUMNS", "300")
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """Run ``cpbench ARGS`` in this process (no interpreter start): (exit code, stdout, stderr)."""

    def run(*args):
        capsys.readouterr()
        code = run_main(monkeypatch, *args)
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run
