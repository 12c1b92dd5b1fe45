"""Your own data as a cpbench dataset: ``cpbench prepare my_set --from-folder DIR``.

Two input shapes:

- a folder with one sub-folder per class (``DIR/<class>/*.jpg``); the class name is the folder
  name (``_`` becomes a space at prompt time, as for the built-in datasets);
- a CSV of ``path,label`` rows (``--csv FILE``; paths relative to ``DIR``, or to the CSV's own
  folder without ``--from-folder``). A label is a class name, or an integer index into
  ``--classnames FILE`` (one name per line).

The images are copied (hard-linked when possible) into ``<root>/<name>/images/``, so the dataset
is self-contained and portable. The split is either given (``--split FILE``, CoOp
``split_zhou`` format with paths relative to the input folder) or generated: per class, the
sorted image list is shuffled with ``random.Random(seed)`` and cut 50% train / 20% val / 30%
test (CoOp's rounding), which needs at least 3 images per class. Labels follow the sorted class
names (folders) or the class-name file order.

The dataset is described by ``<root>/<name>/cpbench_dataset.json`` (name, template, counts);
``catalog.all_specs(root)`` discovers it, so every method and protocol can use it by name.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from cpbench import atomic
from cpbench.data import checks, splits
from cpbench.data.readers import IMAGE_EXTS
from cpbench.data.specs import DatasetSpec, Expected
from cpbench.errors import UserError

SPEC_FILE = "cpbench_dataset.json"
SPLIT_FILE = "split_cpbench.json"
IMAGE_DIR = "images"


def spec_from_file(path: Path) -> DatasetSpec:
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    e = obj.get("expected", {})
    return DatasetSpec(name=obj["name"], dassl_name=obj["name"], folder=Path(path).parent.name, image_dir=IMAGE_DIR,
                       template=obj.get("template", "a photo of a {}."), split_file=SPLIT_FILE, kind="custom",
                       expected=Expected(**{k: e.get(k) for k in ("train", "val", "test", "classes", "base", "new")}),
                       notes=f"custom dataset from {obj.get('source', '?')}")


def custom_specs(root) -> dict[str, DatasetSpec]:
    """The custom datasets under a data root (each ``<root>/<folder>/cpbench_dataset.json``)."""
    root = Path(root)
    out = {}
    if not root.is_dir():
        return out
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        f = Path(entry.path) / SPEC_FILE
        if entry.is_dir() and f.is_file():
            try:
                spec = spec_from_file(f)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a broken description is reported by `prepare`, not by listing
            out[spec.name] = spec
    return out


def _scan_folders(src: Path) -> list[tuple[str, str]]:
    """(relative path, class name) for DIR/<class>/<image>, sorted."""
    rows = []
    for cls in sorted(e.name for e in os.scandir(src) if e.is_dir() and not e.name.startswith(".")):
        for dirpath, dirs, files in os.walk(src / cls):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                    rel = (Path(dirpath) / f).relative_to(src).as_posix()
                    rows.append((rel, cls))
    return rows


def _read_csv(path: Path, classnames: list[str] | None) -> list[tuple[str, str]]:
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise UserError(f"{path}:{n}: expected `path,label`")
            p, label = row[0].strip(), row[1].strip()
            if n == 1 and p.lower() == "path":
                continue  # header
            if classnames is not None and label.lstrip("-").isdigit():
                i = int(label)
                if not 0 <= i < len(classnames):
                    raise UserError(f"{path}:{n}: label {i} is not in the class-name file ({len(classnames)} names)")
                label = classnames[i]
            rows.append((p, label))
    return rows


def _generated_split(rows: list[tuple[str, str]], order: list[str], seed: int) -> splits.Split:
    by_class: dict[str, list[str]] = {c: [] for c in order}
    for rel, cls in rows:
        by_class[cls].append(rel)
    rng = random.Random(seed)
    parts: dict[str, list[splits.Item]] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(order):
        paths = sorted(by_class[cls])
        if len(paths) < 3:
            raise UserError(f"class {cls!r} has {len(paths)} image(s); a generated split needs at least 3 per class "
                            "(add images or pass --split FILE)")
        rng.shuffle(paths)
        n_train = round(len(paths) * 0.5)
        n_val = max(1, round(len(paths) * 0.2))
        n_train = min(n_train, len(paths) - n_val - 1)
        for part, sl in (("train", paths[:n_train]), ("val", paths[n_train:n_train + n_val]),
                         ("test", paths[n_train + n_val:])):
            parts[part].extend(splits.Item(p, label, cls) for p in sl)
    return splits.Split(**{k: tuple(v) for k, v in parts.items()})


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link when possible, else a copy. A file already there
    is kept only when it is ``src`` itself (adopting again after replacing a bad image takes the new one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:  # another file system, or no hard links there: a copy
        tmp.unlink(missing_ok=True)
        with atomic.atomic_path(dst) as copy:
            shutil.copyfile(src, copy)


def prepare_command(ddir: Path, root: Path) -> str:
    """The ``cpbench prepare`` that adopted the dataset in ``ddir`` (recorded in its description):
    running it again rebuilds the dataset from your files."""
    try:
        obj = json.loads((Path(ddir) / SPEC_FILE).read_text(encoding="utf-8"))
        args = obj.get("command") or ["--from-folder", obj["source"]]
        name = obj["name"]
    except (OSError, ValueError, KeyError, TypeError):
        name, args = Path(ddir).name, ["--from-folder", "DIR"]
    return shlex.join(["cpbench", "prepare", name, *args, "--root", str(root)])


def _command_args(from_folder, csv_file, classnames_file, template, split_file, seed, skip_bad) -> list[str]:
    """The options of this adoption, as absolute paths (the command works from any folder)."""
    args = []
    for option, value in (("--from-folder", from_folder), ("--csv", csv_file), ("--classnames", classnames_file),
                          ("--split", split_file)):
        if value is not None:
            args += [option, str(Path(value).resolve())]
    if template != "a photo of a {}.":
        args += ["--template", template]
    if split_file is None and seed != 1:
        args += ["--split-seed", str(seed)]
    if skip_bad:
        args.append("--skip-bad-images")
    return args


def _drop_undecodable(src: Path, rows: list[tuple[str, str]], skip_bad: bool,
                      say: Callable[[str], None]) -> tuple[list[tuple[str, str]], list[str]]:
    """Every image is decoded before anything is written: files that do not decode are refused by
    name, or with ``skip_bad`` (``--skip-bad-images``) left out and counted."""
    from cpbench.data.decode import undecodable

    bad = undecodable(src, sorted({rel for rel, _ in rows}))
    if not bad:
        return rows, []
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if not skip_bad:
        raise UserError(f"{len(bad)} file(s) under {src} do not decode as images: {shown}; remove or replace them, "
                        "or pass --skip-bad-images to leave them out")
    say(f"skipped {len(bad)} file(s) that do not decode as images (--skip-bad-images): {shown}")
    gone = set(bad)
    return [r for r in rows if r[0] not in gone], bad


def make_custom(name: str, root: Path, from_folder: Path | None = None, csv_file: Path | None = None,
                classnames_file: Path | None = None, template: str = "a photo of a {}.",
                split_file: Path | None = None, seed: int = 1, builtin: tuple[str, ...] = (),
                shots: tuple[int, ...] = (), skip_bad: bool = False,
                say: Callable[[str], None] = lambda m: None) -> DatasetSpec:
    """Build ``<root>/<name>/`` from the user's images; return its spec (prepare then marks it ready).
    Everything is checked (at least 2 classes, ``shots`` images per class, every image decodes)
    before a file is written."""
    if not name.replace("_", "").replace("-", "").isalnum() or name.startswith(("-", "_", ".")):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_' or '-'")
    if name in builtin:
        raise UserError(f"{name!r} is a built-in dataset; choose another name for your data")
    if "{}" not in template:
        raise UserError(f"--template {template!r} must contain {{}} where the class name goes")
    if csv_file is not None:
        csv_file = Path(csv_file)
        if not csv_file.is_file():
            raise UserError(f"--csv {csv_file}: no such file")
        src = Path(from_folder) if from_folder is not None else csv_file.parent
    else:
        if from_folder is None:
            raise UserError("--from-folder DIR is needed (one sub-folder per class), or --csv FILE")
        src = Path(from_folder)
    if not src.is_dir():
        raise UserError(f"--from-folder {src}: no such folder")
    classnames = None
    if classnames_file is not None:
        classnames = [line.strip() for line in Path(classnames_file).read_text(encoding="utf-8").splitlines()
                      if line.strip()]
    rows = _read_csv(csv_file, classnames) if csv_file is not None else _scan_folders(src)
    if not rows:
        raise UserError(f"{src}: no images found (expected DIR/<class>/<image> or a CSV of path,label)")
    for rel, _ in rows:
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise UserError(f"image path {rel!r} must be relative to {src} without '..'")
        if not (src / rel).is_file():
            raise UserError(f"image {src / rel} is missing")
    present = sorted({c for _, c in rows})
    order = [c for c in classnames if c in present] if classnames else present
    if split_file is not None:
        split = splits.read_split(split_file, f"fix the file given to --split ({split_file})")
        for it in (*split.train, *split.val, *split.test):
            if not (src / it.path).is_file():
                raise UserError(f"--split names {it.path}, which is not in {src}")
        rows = sorted({(it.path, it.classname) for it in (*split.train, *split.val, *split.test)})
    rows, skipped = _drop_undecodable(src, rows, skip_bad, say)
    if split_file is not None:
        if skipped:
            gone = set(skipped)
            split = splits.Split(*(tuple(it for it in getattr(split, part) if it.path not in gone)
                                   for part in ("train", "val", "test")))
    else:
        split = _generated_split(rows, order, seed)
    checks.require_classes(name, split, trained=True)
    checks.require_shots(name, split, shots)
    ddir = Path(root) / name
    for rel, _ in rows:
        _place(src / rel, ddir / IMAGE_DIR / rel)
    splits.write_split(ddir / SPLIT_FILE, split)
    base, new = splits.base_new_labels(split.train)
    counts = dict(train=len(split.train), val=len(split.val), test=len(split.test),
                  classes=len(split.classnames), base=len(base), new=len(new))
    atomic.write_json(ddir / SPEC_FILE, {
        "name": name, "template": template, "source": str(src.resolve()),
        "split": "given" if split_file is not None else f"generated 50/20/30 per class, seed {seed}",
        "expected": counts, "skipped_images": skipped,
        "command": _command_args(from_folder, csv_file, classnames_file, template, split_file, seed, skip_bad)})
    return spec_from_file(ddir / SPEC_FILE)
