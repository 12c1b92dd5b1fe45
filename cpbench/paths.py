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


def cache_root(explicit: str | Path | None = None) -> Path:
    """Where derived, re-creatable files go (feature caches, training-view stores): never under the data
    root, which may be a lab's shared read-only folder. ``$CPBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/cpbench``, else ``~/.cache/cpbench``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("CPBENCH_CACHE"):
        return Path(os.environ["CPBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "cpbench"


def chosen_by(path: str | Path, option: str, env: str) -> str:
    """What chose the folder ``path``, for messages about it: the environment variable that names it
    (``$CPBENCH_DATA``), else the option (also for the default, which the option changes)."""
    value = os.environ.get(env)
    if value and Path(value).expanduser() == Path(path):
        return f"${env}"
    return option


def check_cache() -> None:
    """The cache folder can be written (or created), checked before any work; an error names what
    chose it and the way around it."""
    from cpbench.errors import UserError

    path = cache_root()
    if os.environ.get("CPBENCH_CACHE"):
        what = "$CPBENCH_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        what = "$XDG_CACHE_HOME/cpbench"
    else:
        what = "the cache folder"
    try:
        check_folder(path, what)
    except UserError as exc:
        why = str(exc).replace("; choose a writable folder", "").replace("; choose a folder you can write to", "")
        raise UserError(f"{why}; feature caches go there: set $CPBENCH_CACHE to a writable folder, or pass --no-cache") from None


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
