"""``cpbench predict``: the top-k classes of images under an export file's prompts.

Everything a user can get wrong (a format, a non-image input, a backbone other than the file's, new
classes for a model bound to its trained ones) is refused with one line before the backbone loads.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cpbench.errors import UserError

FORMATS = ("text", "csv", "json")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # the header only: cheap for any number of files
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{path} is not an image (PIL cannot read it); pass image files or folders of images") from None


def image_files(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expand to their image files (by suffix, recursively, sorted, hidden
    entries skipped). Every file must be a readable image."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise UserError(f"{p}: no image files in that folder ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    for f in files:
        _check_image(f)
    return files


def read_classes(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"--classes {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"--classes {path} is not UTF-8 text; save it as UTF-8, one class name a line") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise UserError(f"--classes {path} has no class names; write one a line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--classes {path} repeats {dup[0]!r}; list each class once")
    return names


def render(paths: list[Path], predictions: list[list[tuple[str, float]]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{"path": str(p), "top": [{"class": c, "probability": round(v, 6)} for c, v in pred]}
                           for p, pred in zip(paths, predictions)], indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "class", "probability"])
        for p, pred in zip(paths, predictions):
            for rank, (c, v) in enumerate(pred, 1):
                w.writerow([str(p), rank, c, f"{v:.6f}"])
        return buf.getvalue()
    return "".join(f"{p}: " + ", ".join(f"{c} {100 * v:.1f}%" for c, v in pred) + "\n"
                   for p, pred in zip(paths, predictions))


def run(prompts: Path, inputs: list[Path], top_k: int = 5, classes: Path | None = None, fmt: str = "text",
        backbone: str | None = None, weights: str | None = None, device: str = "auto") -> str:
    """The rendered predictions (validated in full before anything is loaded)."""
    from cpbench.state import export

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    meta = export.read_meta(prompts)
    rec = meta["backbone"]
    export.check_backbone_request(meta, backbone or rec["name"], rec["pretrained"], weights, prompts)
    names = read_classes(classes) if classes is not None else None
    from cpbench import api

    if names is not None:
        api.check_classes(meta, names)
    files = image_files(inputs)
    clf = api.load(prompts, backbone=backbone, device=device, weights=weights)
    if names is not None:
        clf = clf.with_classes(names)
    return render(files, clf.predict(files, top_k), fmt)
