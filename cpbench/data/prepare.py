"""``cpbench prepare``: fetch -> verify -> extract -> split -> few-shot files, and loading a
prepared dataset for ``run``.

A dataset folder is ready when its marker ``.cpbench.json`` exists; the marker is written last
and atomically, so an interrupted prepare is simply redone. Two prepares of one dataset are
serialised by a file lock under ``<root>/.locks``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from filelock import FileLock

from cpbench import atomic
from cpbench.data import fetch, splits
from cpbench.data.specs import DatasetSpec, all_specs
from cpbench.errors import UserError

MARKER = ".cpbench.json"
Say = Callable[[str], None]


@dataclass(frozen=True)
class PreparedDataset:
    spec: DatasetSpec
    dir: Path
    split: splits.Split

    @property
    def image_root(self) -> Path:
        return self.dir / self.spec.image_dir

    @property
    def name(self) -> str:
        return self.spec.name

    def fewshot(self, shots: int, seed: int) -> splits.FewShot:
        return splits.load_or_make_fewshot(self.dir, self.spec.name, self.split, shots, seed, self.spec.val_is_test)


def get_spec(name: str, root: Path | None = None) -> DatasetSpec:
    specs = all_specs()
    if name not in specs:
        known = ", ".join(specs)
        raise UserError(f"unknown dataset {name!r}; known datasets: {known} (see `cpbench list`)")
    return specs[name]


def dataset_dir(spec: DatasetSpec, root: Path) -> Path:
    return Path(root) / spec.folder


def is_prepared(spec: DatasetSpec, root: Path) -> bool:
    return (dataset_dir(spec, root) / MARKER).exists()


def prepared_names(root: Path) -> list[str]:
    return [name for name, spec in all_specs().items() if is_prepared(spec, root)]


def _read_split(spec: DatasetSpec, ddir: Path) -> splits.Split:
    if spec.read_split is not None:
        return spec.read_split(ddir)
    assert spec.split_file, spec.name
    path = ddir / spec.split_file
    if not path.exists():
        raise UserError(f"{spec.name}: split file {path} is missing; run `cpbench prepare {spec.name}`")
    return splits.read_split(path)


def load(name: str, root: Path) -> PreparedDataset:
    """A prepared dataset, or a UserError naming the ``cpbench prepare`` to run."""
    spec = get_spec(name)
    ddir = dataset_dir(spec, root)
    if not (ddir / MARKER).exists():
        raise UserError(f"dataset {name!r} is not prepared under {root}; run `cpbench prepare {name} --root {root}`")
    return PreparedDataset(spec, ddir, _read_split(spec, ddir))


def missing_files(image_root: Path, split: splits.Split, limit: int | None = None) -> list[str]:
    missing = []
    for item in (*split.train, *split.val, *split.test):
        if not (image_root / item.path).is_file():
            missing.append(item.path)
            if limit and len(missing) >= limit:
                break
    return missing


def check_counts(spec: DatasetSpec, split: splits.Split) -> dict:
    """Assert the split against the spec's expected sizes; return the measured counts."""
    base, new = splits.base_new_labels(split.train)
    got = dict(train=len(split.train), val=len(split.val), test=len(split.test),
               classes=len(split.classnames), base=len(base), new=len(new))
    exp = spec.expected
    for key, value in got.items():
        want = getattr(exp, key)
        if want is not None and want != value:
            raise UserError(f"{spec.name}: {key} has {value} entries, expected {want}; the files differ from the "
                            f"official release (delete {spec.folder}/ and prepare again)")
    return got


def _fetch_sources(spec: DatasetSpec, ddir: Path, root: Path, from_dir: Path | None,
                   say: Say, progress: fetch.Progress | None) -> dict:
    report = {}
    downloads = Path(root) / ".downloads" / spec.name
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
            raise UserError(f"{spec.name}: could not download {src.filename} ({exc}); download it by hand and use --from DIR") from None
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


def prepare(name: str, root: Path, from_dir: Path | None = None, shots: Sequence[int] = (),
            seeds: Sequence[int] = (1, 2, 3), force: bool = False, say: Say = lambda m: None,
            progress: fetch.Progress | None = None) -> tuple[PreparedDataset, dict]:
    spec = get_spec(name)
    for k in shots:
        if k <= 0:
            raise UserError(f"--shots must be positive integers (got {k})")
    if from_dir is not None and not Path(from_dir).is_dir():
        raise UserError(f"--from {from_dir}: no such folder")
    root = Path(root)
    ddir = dataset_dir(spec, root)
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".locks" / f"{spec.name}.lock")):
        marker = ddir / MARKER
        info: dict
        if marker.exists() and not force:
            info = json.loads(marker.read_text(encoding="utf-8"))
            split = _read_split(spec, ddir)
            counts = check_counts(spec, split)
            info["skipped"] = True
        else:
            marker.unlink(missing_ok=True)
            started = time.time()
            if spec.kind == "generated":
                from cpbench.data.toy.datasets import build_toy_dataset

                say(f"generating {spec.name}")
                build_toy_dataset(spec.name, ddir, seed=0,
                                  progress=(lambda d, t: progress(spec.name, d, t)) if progress else None)
                sources = {"generated": {"seed": 0}}
            else:
                sources = _fetch_sources(spec, ddir, root, from_dir, say, progress)
            split = _read_split(spec, ddir)
            counts = check_counts(spec, split)
            missing = missing_files(ddir / spec.image_dir, split, limit=5)
            if missing:
                raise UserError(f"{spec.name}: {len(missing)}+ images named by the split file are missing "
                                f"(first: {missing[0]}); the archive does not match the split file")
            info = {"dataset": spec.name, "split_sha256": splits.split_hash(split), "counts": counts,
                    "sources": sources, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(time.time() - started, 2)}
            atomic.write_json(marker, info)
            info["skipped"] = False
        ds = PreparedDataset(spec, ddir, split)
        fewshot = {}
        for k in shots:
            for s in seeds:
                fs = ds.fewshot(k, s)
                fewshot[f"{k}-shot seed {s}"] = (len(fs.train), len(fs.val))
        info["counts"] = counts
        info["fewshot"] = fewshot
        return ds, info


def read_marker(ddir: Path) -> dict:
    try:
        return json.loads((ddir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
