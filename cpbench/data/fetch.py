"""Getting files: download (streaming, resumable, retried, verified) or take them from a folder,
and extract archives safely.

Checksums: a downloaded file whose checksum does not match is deleted and fetched again (from
the next mirror). A file given with ``--from`` whose checksum is unknown or differs (a repacked
archive, say) is accepted with a warning *only if* the extracted content then passes the
dataset's content check against its split file (see ``prepare``): every image the split file
names must then exist after extraction and the split sizes must equal the spec's expected counts.

Google Drive share links are rewritten to the direct-download endpoint with ``confirm=t`` (which
skips the "file too large to scan" confirm page); an HTML page received instead of a file is
treated as a failed attempt, never saved as the file.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from cpbench.errors import UserError

Progress = Callable[[str, int, int | None], None]  # (label, done_bytes, total_bytes)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One file a dataset needs: official URL first, then mirrors."""

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    extract: bool = False           # extract into the dataset dir after fetching
    strip: str = ""                 # leading folder to drop from archive members
    inner: str | None = None        # a nested archive to extract instead (e.g. a tgz inside a zip)
    dest: str = ""                  # sub-folder of the dataset dir to extract into (Sketch: sketch/ -> images/)
    members: tuple[str, ...] = ()   # extract only these members (paths after ``strip``); () = all
    optional: bool = False
    manual: str | None = None       # when nothing can be automated: what to do, said to the user


def digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_status(path: Path, src: Source) -> str:
    """'ok', 'mismatch' or 'unknown'."""
    if src.sha256:
        return "ok" if digest(path, "sha256") == src.sha256 else "mismatch"
    if src.md5:
        return "ok" if digest(path, "md5") == src.md5 else "mismatch"
    return "unknown"


def _gdrive_direct(url: str) -> str:
    """Turn a Google Drive share link into the direct-download endpoint."""
    if "drive.google.com" in url and "/file/d/" in url:
        file_id = url.split("/file/d/")[1].split("/")[0]
        return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"
    return url


def download(url: str, dest: Path, progress: Progress | None = None, retries: int = 3,
             timeout: float = 60.0, backoff: float = 1.0) -> None:
    """Stream ``url`` to ``dest`` through ``dest.part``, resuming a partial file with HTTP Range."""
    url = _gdrive_direct(url)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_exc: Exception | None = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "cpbench"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = getattr(resp, "status", 200)
                if have and status != 206:  # server ignored the Range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                ctype = resp.headers.get("Content-Type", "")
                if "text/html" in ctype and not dest.name.endswith((".html", ".htm")):
                    raise urllib.error.URLError(f"got an HTML page instead of {dest.name} (quota or confirm page)")
                with open(part, "ab" if have else "wb") as out:
                    done = have
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(dest.name, done, total)
                if total is not None and done < total:
                    raise urllib.error.URLError(f"connection closed at {done}/{total} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as exc:
            last_exc = exc
            if exc.code == 416:  # range not satisfiable: the part is complete or bogus
                part.unlink(missing_ok=True)
            elif exc.code in (401, 403, 404, 410):
                break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last_exc = exc
            if isinstance(getattr(exc, "reason", None), socket.gaierror):
                break  # the host name does not resolve (offline): retrying will not help
        if attempt < retries:
            time.sleep(backoff * (2 ** attempt))
    raise ConnectionError(f"{url}: {last_exc}")


def available(src: Source, from_dir: Path) -> bool:
    """``from_dir`` holds ``src`` (or, for a nested archive, the inner archive itself)."""
    if (Path(from_dir) / src.filename).exists():
        return True
    return bool(src.inner) and (Path(from_dir) / PurePosixPath(src.inner).name).exists()


def obtain(src: Source, downloads: Path, from_dir: Path | None, progress: Progress | None = None,
           warn: Callable[[str], None] = lambda msg: None) -> tuple[Path, str]:
    """Return (path, checksum status) of a verified-or-unknown copy of ``src``.

    ``from_dir`` wins when it holds the file. Downloads whose checksum mismatches are removed
    and the next URL is tried.
    """
    if from_dir is not None:
        cand = Path(from_dir) / src.filename
        if not cand.exists() and src.inner:  # the inner archive given directly
            cand = Path(from_dir) / PurePosixPath(src.inner).name
            if cand.exists():
                return cand, "unknown"
        if cand.exists():
            status = checksum_status(cand, src)
            if status == "mismatch":
                warn(f"{cand.name}: checksum differs from the official one (repacked copy?); "
                     "it will be accepted only if its content matches the split file")
            return cand, status
        raise FileNotFoundError(str(cand))
    dest = downloads / src.filename
    if dest.exists():
        status = checksum_status(dest, src)
        if status != "mismatch":
            return dest, status
        dest.unlink()
    errors = []
    for url in src.urls:
        for attempt in (1, 2):  # a corrupt download gets one more clean attempt from the same URL
            try:
                download(url, dest, progress)
            except ConnectionError as exc:
                errors.append(str(exc))
                break
            status = checksum_status(dest, src)
            if status != "mismatch":
                return dest, status
            dest.unlink()
            if attempt == 1:
                errors.append(f"{url}: checksum mismatch (corrupt download), discarded")
    raise ConnectionError("; ".join(errors) or f"no URL known for {src.filename}")


# --------------------------------------------------------------------------- extraction


def _safe_member_path(name: str, strip: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise UserError(f"refusing archive member {name!r}: it would be written outside the dataset folder")
    parts = [x for x in p.parts if x not in ("", ".")]
    if strip:
        sp = [x for x in PurePosixPath(strip).parts]
        if parts[: len(sp)] != sp:
            return None
        parts = parts[len(sp):]
    return PurePosixPath(*parts) if parts else None


def extract_source(path: Path, src: Source, target: Path, progress: Progress | None = None) -> None:
    """Extract a fetched source; for an outer archive with ``inner``, extract the inner one."""
    if src.inner and path.name != PurePosixPath(src.inner).name:
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{PurePosixPath(src.inner).name}.tmp"
        try:
            try:
                with zipfile.ZipFile(path) as zf, zf.open(src.inner) as s, open(tmp, "wb") as d:
                    shutil.copyfileobj(s, d, CHUNK)
            except KeyError:
                raise UserError(f"{path.name} does not contain {src.inner}; delete it and prepare again") from None
            except CORRUPT as exc:
                raise UserError(f"{path} is truncated or corrupt ({exc or exc.__class__.__name__}); replace it with "
                                "a complete copy (or delete it to download it again) and run prepare again") from None
            extract(tmp, target / src.dest if src.dest else target, src.strip, progress,
                    fmt=PurePosixPath(src.inner).name, members=src.members)
        finally:
            tmp.unlink(missing_ok=True)
        return
    extract(path, target / src.dest if src.dest else target, src.strip, progress, members=src.members)


# what a truncated or corrupt archive raises while it is read (gzip/bz2/xz streams end early with
# EOFError, which typer would otherwise turn into its "Aborted" exit)
CORRUPT = (EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, lzma.LZMAError)


def extract(archive: Path, target: Path, strip: str = "", progress: Progress | None = None,
            fmt: str | None = None, members: tuple[str, ...] = ()) -> None:
    """Extract tar(.gz/.bz2/.xz) or zip into ``target``: no absolute paths, no ``..``, no links,
    no devices. The whole archive is checked before anything is written. ``members``: only these
    paths (after ``strip``) are written. A truncated or corrupt archive is a ``UserError`` naming it."""
    try:
        _extract(archive, target, strip, progress, fmt, members)
    except CORRUPT as exc:
        why = str(exc) or exc.__class__.__name__
        raise UserError(f"{archive} is truncated or corrupt ({why}); replace it with a complete copy "
                        "(or delete it to download it again) and run prepare again") from None


@dataclass(frozen=True)
class _Member:
    """An archive member, whatever the format: its path in the archive, whether it is a folder, what
    kind of thing is refused in it ("" if none) and how to read its bytes."""
    name: str
    is_dir: bool
    refused: str
    open: Callable[[], BinaryIO]


def _zip_members(zf: zipfile.ZipFile) -> list[_Member]:
    out = []
    for info in zf.infolist():
        link = (info.external_attr >> 16) & 0o170000 == 0o120000
        out.append(_Member(info.filename, info.is_dir(), "symbolic link" if link else "", lambda i=info: zf.open(i)))
    return out


def _tar_members(tf: tarfile.TarFile) -> list[_Member]:
    out = []
    for m in tf.getmembers():
        refused = "link" if m.issym() or m.islnk() else "" if m.isfile() or m.isdir() else "not a regular file or folder"
        out.append(_Member(m.name, m.isdir(), refused, lambda m=m: tf.extractfile(m)))
    return out


def _extract(archive: Path, target: Path, strip: str, progress: Progress | None, fmt: str | None,
             members: tuple[str, ...]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    name = (fmt or archive.name).lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            _write(_zip_members(zf), target.resolve(), strip, set(members), progress, archive.name)
    else:
        with tarfile.open(archive) as tf:
            _write(_tar_members(tf), target.resolve(), strip, set(members), progress, archive.name)


def _write(members: list[_Member], root: Path, strip: str, wanted: set[str], progress: Progress | None,
           label: str) -> None:
    """Every member checked first (path inside ``root``, no link or device), then written."""
    plan = []
    for m in members:
        rel = _safe_member_path(m.name, strip)
        if m.refused:
            raise UserError(f"refusing archive member {m.name!r}: {m.refused}")
        plan.append((m, rel))
    for n, (m, rel) in enumerate(plan, 1):
        if rel is None or (wanted and rel.as_posix() not in wanted):
            continue
        out = root / rel
        if m.is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with m.open() as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        if progress and n % 200 == 0:
            progress(label, n, len(plan))
