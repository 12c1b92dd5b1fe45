"""Whether image files decode: what ``prepare`` checks of every image it adopts (your own folders
and CSVs, and ``--check``). Pillow releases the GIL while it decodes, so a thread per CPU this
process may use decodes in parallel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def decodes(path: Path) -> bool:
    """``path`` is an image Pillow can verify and fully load (not text named .jpg, not truncated)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # structure and checksums (PNG CRCs), without decoding the pixels
        with Image.open(path) as img:  # verify() leaves the image unusable: open it again
            img.load()  # every pixel: a truncated file fails here
    except Exception:  # any decoder failure means the file is unusable
        return False
    return True


def undecodable(root: Path, rels: Sequence[str], progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The paths of ``rels`` (relative to ``root``, existing files) that do not decode, in order."""
    from cpbench.threads import available_cpus

    workers = max(1, min(8, available_cpus()[0]))
    ok: list[bool] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, good in enumerate(pool.map(lambda r: decodes(Path(root) / r), rels, chunksize=16), 1):
            ok.append(good)
            if progress and n % 500 == 0:
                progress(n, len(rels))
    return [r for r, good in zip(rels, ok) if not good]
