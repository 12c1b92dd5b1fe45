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


def check_folder(path: Path, option: str) -> None:
    """``path`` is a folder this process can write, or can be created as one; checked without
    creating anything (``--results /etc/passwd/x`` fails here, not after the backbone is loaded)."""
    from cpbench.errors import UserError

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{option} {path} is a file; pass a folder (it is created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path} is not writable; choose a folder you can write to")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, so no folder can be made under it; pass a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it inside {parent} (not writable); choose a writable folder")
