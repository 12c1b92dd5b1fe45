"""Default locations (overridable by flags and environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("CPBENCH_DATA", "./data")).expanduser()


def results_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("CPBENCH_RESULTS", "./results")).expanduser()
