"""A dataset's folder under the data root: where it is, its prepare record (the marker
``.cpbench.json``, written last and atomically: a folder without it is not prepared), and fetching
its source files into it. Shared by the classification datasets (``prepare.py``) and the
image-caption ones (``captions.py``)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from cpbench import atomic
from cpbench.data import fetch, splits
from cpbench.data.specs import DatasetSpec
from cpbench.errors import UserError

MARKER = ".cpbench.json"
Say = Callable[[str], None]


def dataset_dir(spec: DatasetSpec, root: Path) -> Path:
    return Path(root) / spec.folder


def is_prepared(spec: DatasetSpec, root: Path) -> bool:
    return (dataset_dir(spec, root) / MARKER).exists()


def missing_files(image_root: Path, split: splits.Split, limit: int | None = None) -> list[str]:
    missing = []
    for item in (*split.train, *split.val, *split.test):
        if not (image_root / item.path).is_file():
            missing.append(item.path)
            if limit and len(missing) >= limit:
                break
    return missing


def current_record(spec: DatasetSpec, ddir: Path, force: bool, digest: Callable[[], str], say: Say) -> dict:
    """The dataset's prepare record (its marker), or {} when it must be prepared (again): none
    yet, ``force``, or generated data whose definition ``digest()`` changed (its folder is then
    removed, so an older cpbench's files are never mixed with new ones)."""
    marker = ddir / MARKER
    info: dict = json.loads(marker.read_text(encoding="utf-8")) if marker.exists() and not force else {}
    if info and spec.kind == "generated":
        if info.get("sources", {}).get("generated", {}).get("definition") != digest():
            say(f"{spec.name}: this cpbench generates it differently; regenerating")
            shutil.rmtree(ddir)
            info = {}
    return info


def write_record(ddir: Path, info: dict, started: float) -> dict:
    """Complete the prepare record (time, disk use) and write the marker: the last step, atomic."""
    info = {**info, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2),
            "disk_bytes": disk_usage(ddir)}
    info["disk"] = human_size(info["disk_bytes"])
    atomic.write_json(ddir / MARKER, info)
    return {**info, "skipped": False}


def read_marker(ddir: Path) -> dict:
    try:
        return json.loads((ddir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _needed(spec: DatasetSpec) -> str:
    names = [src.filename for src in spec.sources if not src.optional]
    optional = [src.filename for src in spec.sources if src.optional]
    return ", ".join(names) + (f" (optional: {', '.join(optional)})" if optional else "")


def fetch_sources(spec: DatasetSpec, ddir: Path, root: Path, from_dir: Path | None,
                  say: Say, progress: fetch.Progress | None) -> dict:
    """Every source file of ``spec`` (downloaded, or taken from ``from_dir``) into ``ddir``:
    extracted or copied; returns what was used and its checksum status."""
    report = {}
    downloads = Path(root) / ".downloads" / spec.name
    if from_dir is not None:  # name every missing file at once, before anything is extracted
        missing = [src.filename for src in spec.sources if not src.optional and not fetch.available(src, from_dir)]
        if missing:
            raise UserError(f"{spec.name}: {from_dir} lacks {', '.join(missing)}; --from needs {_needed(spec)}; "
                            "put them there or drop --from to download them")
    for src in spec.sources:
        if src.manual and from_dir is None and not (downloads / src.filename).exists():
            raise UserError(f"{spec.name}: {src.manual}")
        try:
            path, status = fetch.obtain(src, downloads, from_dir, progress, warn=say)
        except FileNotFoundError as exc:
            if src.optional:
                continue
            raise UserError(f"{spec.name}: {Path(str(exc)).name} not found in {from_dir}; put the file there or drop --from to download it") from None
        except ConnectionError as exc:
            if src.optional:
                continue
            raise UserError(f"{spec.name}: could not download {src.filename} ({exc}); fetch these files by hand into "
                            f"one folder and pass --from DIR: {_needed(spec)}") from None
        report[src.filename] = {"file": path.name, "checksum": status}
        if status == "unknown" and src.extract:
            say(f"{path.name}: no official checksum to compare; verifying its content against the split file instead")
        if src.extract:
            say(f"extracting {path.name}")
            fetch.extract_source(path, src, ddir, progress)
        elif path.resolve() != (ddir / src.filename).resolve():
            ddir.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(ddir / src.filename) as tmp:
                shutil.copyfile(path, tmp)
    return report
