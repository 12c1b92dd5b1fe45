"""``cpbench prepare``: fetch -> verify -> extract -> split -> few-shot files, and loading a
prepared dataset for ``run``.

A dataset folder is ready when its marker ``.cpbench.json`` exists; the marker is written last
and atomically, so an interrupted prepare is simply redone. Two prepares of one dataset are
serialised by a file lock under ``<root>/.locks`` (removed when prepare ends; ``cpbench/locks.py``).
``prepare`` is the only writer of a data root: ``run`` reads split and few-shot files and draws
the few-shot sets ``prepare`` did not store in memory, so a lab's shared root may be read-only.

Sources are tried in order (official URL with its checksum, then mirrors); a file given with
``--from DIR`` whose checksum is unknown or differs from the official one is accepted only if
the extracted content matches the split file: every image it names exists and the split sizes
equal the spec's expected counts (otherwise prepare fails and nothing is marked ready).

Readers of layouts without a split json (FGVCAircraft, the ImageNet family) scan once at prepare
time; the result is cached as ``.cpbench_split.json`` next to the marker so ``run`` does not
rescan 1.3M ImageNet files. ``check`` re-verifies a prepared dataset: counts against the split
file, and every image opened and decoded (missing and unreadable/truncated files are named).

Tests (and power users) may pass ``spec=`` to ``prepare``/``load``/``check`` to use a modified
spec (e.g. loopback URLs and relaxed counts) instead of the registered one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cpbench import locks
from cpbench.data import catalog, checks, fetch, folders, splits
from cpbench.data.folders import (MARKER, Say, current_record, dataset_dir, fetch_sources, missing_files,
                                  write_record)
from cpbench.data.specs import DatasetSpec
from cpbench.errors import UserError


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

    @property
    def cache_tag(self) -> str:
        """Name plus a digest of its prepare record and its folder: feature caches keyed on it go stale
        when the dataset is prepared again (regenerated toy images keep their paths), and two data roots
        never share entries (the cache lives in the user's cache folder, not under the data root)."""
        try:
            record = (self.dir / MARKER).read_bytes()
        except OSError:
            record = b""
        digest = hashlib.sha256(record + b"\0" + str(self.dir.resolve()).encode("utf-8", "surrogateescape"))
        return f"{self.spec.name}@{digest.hexdigest()[:12]}"

    @property
    def imagenet_indices(self) -> list[int] | None:
        """ImageNet-1k index of each label, for the ImageNet family (for A/R: the 200 labels in sorted
        wnid order, so class-specific methods can gather their rows); None for other datasets."""
        from cpbench.data import readers
        from cpbench.data.specs import IMAGENET_FAMILY, WNID_SUBSETS

        if self.spec.name in WNID_SUBSETS or self.spec.name == "imagenet_sketch":
            return readers.imagenet_indices(readers.folder_wnids(self.dir, self.spec.image_dir))
        if self.spec.name == "imagenet":
            return readers.imagenet_indices(readers.folder_wnids(self.dir, f"{self.spec.image_dir}/train"))
        if self.spec.name in IMAGENET_FAMILY:  # ImageNetV2: folder i is class i
            return sorted({it.label for it in self.split.test})
        return None

    def check_fewshot(self, shots: Sequence[int], seeds: Sequence[int]) -> None:
        """The few-shot files ``prepare`` stored for these draws read (before any work; a draw without
        a file is made in memory later): a damaged one is one line naming it and its repair."""
        digest = splits.split_hash(self.split)
        for k in (k for k in shots if k > 0):
            for seed in seeds:
                splits.read_fewshot(splits.fewshot_path(self.dir, digest, k, seed), digest, k, seed,
                                    fewshot_repair(self.spec, self.dir.parent, k, seed))

    def fewshot(self, shots: int, seed: int, write: bool = False) -> splits.FewShot:
        """The k-shot draw of ``seed``: ``prepare``'s file, else drawn in memory; ``write``: only
        ``prepare`` stores it."""
        return splits.load_or_make_fewshot(self.dir, self.spec.name, self.split, shots, seed, self.spec.val_is_test,
                                           write=write, repair=fewshot_repair(self.spec, self.dir.parent, shots, seed))



def fewshot_source(name: str, root: Path, shots: int, seed: int) -> str:
    """Where a training's ``shots``/``seed`` images come from (``splits.FewShot.source``): "cpbench"
    unless the dataset folder holds CoOp's few-shot file for them (then it is read, and compared with
    cpbench's draw). Cheap when there is no such file; the answer is kept per file version."""
    if shots < 1:
        return ""
    spec = catalog.get_spec(name, root)
    if spec.task != "classification":
        return ""
    ddir = dataset_dir(spec, root)
    path = splits.dassl_fewshot_path(ddir, shots, seed)
    try:
        st = path.stat()
    except OSError:
        return "cpbench"
    try:  # a dataset prepared again may have another split: compare again
        prepared = (ddir / MARKER).stat().st_mtime_ns
    except OSError:
        prepared = 0
    return _dassl_source(name, str(Path(root)), shots, seed, (st.st_mtime_ns, st.st_size, prepared))


@functools.lru_cache(maxsize=64)
def _dassl_source(name: str, root: str, shots: int, seed: int, _version: tuple) -> str:
    return load(name, Path(root)).fewshot(shots, seed).source


def dassl_fewshot_note(root: Path, datasets, shots, seeds) -> str:
    """One line naming the CoOp few-shot files the run will train on ("" when none), so a user sees
    once that their own draws are used (and whether they are cpbench's draws or other images)."""
    same, other = [], []
    for d in datasets:
        for k in shots:
            for s in seeds:
                src = fewshot_source(d, root, k, s)
                if src.startswith("dassl-pkl"):
                    (same if src == splits.DASSL_SAME else other).append(f"{d} shot_{k}-seed_{s}.pkl")
    if not same and not other:
        return ""
    parts = []
    if other:
        parts.append(f"{', '.join(other)} (images differ from cpbench's sorted-order draw: these rows are "
                     "labelled 'dassl shots')")
    if same:
        parts.append(f"{', '.join(same)} (the same images cpbench draws)")
    return "using CoOp's few-shot files (split_fewshot/*.pkl) for the training images: " + "; ".join(parts)


def subset_items(ds: PreparedDataset, subset: str, shots: int, seed: int, part: str):
    """Items of ``part`` (train|val|test) for a class subset, with the subset's class names."""
    fs = ds.fewshot(shots, seed) if shots > 0 else None
    train_items = fs.train if fs else ds.split.train
    val_items = fs.val if fs else ds.split.val
    (tr, va, te), names = splits.subsample_classes(subset, train_items, val_items, ds.split.test)
    return {"train": tr, "val": va, "test": te}[part], names, (tr, va)



SPLIT_CACHE = ".cpbench_split.json"


def repair_hint(spec: DatasetSpec, root: Path) -> str:
    """What rebuilds a dataset's split files, as a command that works as written: ``--force`` for
    the datasets cpbench downloads or generates; for your own data, the command that adopted it."""
    if spec.kind == "custom":
        from cpbench.data.custom import prepare_command

        return f"run `{prepare_command(dataset_dir(spec, root), root)}` to rebuild it"
    return f"run `cpbench prepare {spec.name} --force --root {root}` to rebuild it"


def fewshot_repair(spec: DatasetSpec, root: Path, shots: int, seed: int) -> str:
    return f"run `cpbench prepare {spec.name} --shots {shots} --seeds {seed} --root {root}` to draw it again"


def _read_split(spec: DatasetSpec, ddir: Path, use_cache: bool = True) -> splits.Split:
    repair = repair_hint(spec, ddir.parent)
    if spec.read_split is not None:
        cache = ddir / SPLIT_CACHE
        if use_cache and cache.is_file():
            return splits.read_split(cache, repair)
        return spec.read_split(ddir)
    assert spec.split_file, spec.name
    path = ddir / spec.split_file
    if not path.exists():
        raise UserError(f"{spec.name}: split file {path} is missing; {repair}")
    return splits.read_split(path, repair)


def load(name: str, root: Path, spec: DatasetSpec | None = None) -> PreparedDataset:
    """A prepared dataset, or a UserError naming the ``cpbench prepare`` to run."""
    spec = spec or catalog.get_spec(name, root)
    if spec.task != "classification":
        raise UserError(f"{name} is an image-caption dataset; run it with --protocol retrieval")
    ddir = dataset_dir(spec, root)
    if not (ddir / MARKER).exists():
        existing = _existing_coop(spec, ddir)
        if existing is not None:  # a CoOp DATA folder used as --root unchanged
            return PreparedDataset(spec, ddir, existing)
        raise UserError(f"dataset {name!r} is not prepared under {root}; run `cpbench prepare {name} --root {root}`")
    return PreparedDataset(spec, ddir, _read_split(spec, ddir))


def _existing_coop(spec: DatasetSpec, ddir: Path) -> splits.Split | None:
    """The split of a complete dataset folder laid out by CoOp (no cpbench marker), else None.

    Complete = the split file (or reader input) is there, the counts match the spec and the first
    and last image of every part exist (a full scan is ``--check``'s job)."""
    if spec.kind not in ("download", "manual") or not (ddir / spec.image_dir).is_dir():
        return None
    if spec.split_file and not (ddir / spec.split_file).is_file():
        return None
    try:
        split = _read_split(spec, ddir)
        check_counts(spec, split)
    except (UserError, OSError):
        return None
    sample = [p[i] for p in (split.train, split.val, split.test) if p for i in (0, -1)]
    if not sample or missing_files(ddir / spec.image_dir, splits.Split(tuple(sample), (), ())):
        return None
    return split


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


def _manual_source(spec: DatasetSpec, ddir: Path, from_dir: Path | None) -> dict:
    """ImageNet: nothing can be downloaded; take the arranged folders (in place, or from --from)."""
    images = ddir / spec.image_dir
    if not (images / "train").is_dir() and from_dir is not None and (Path(from_dir) / "train").is_dir():
        images.mkdir(parents=True, exist_ok=True)
        for part in ("train", "val"):
            if (Path(from_dir) / part).is_dir() and not (images / part).exists():
                (images / part).symlink_to(Path(from_dir, part).resolve(), target_is_directory=True)
    if not (images / "train").is_dir() or not (images / "val").is_dir():
        raise UserError(f"{spec.name}: {spec.notes}")
    return {"manual": str(images)}


def _tidy_after_failure(created: list[Path], ddir: Path, lock: Path) -> None:
    """A failed or interrupted prepare leaves nothing it created behind but resumable downloads:
    its dataset folder (a partial extraction is redone anyway), empty download folders, and the
    lock file and folders of a data root it made."""
    if ddir in created:
        shutil.rmtree(ddir, ignore_errors=True)
    if lock.parent in created:
        lock.unlink(missing_ok=True)
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):  # deepest first
        try:
            folder.rmdir()  # only if empty: a partial download (.part) stays for the next try
        except OSError:
            pass


def check_draws(shots: Sequence[int], seeds: Sequence[int]) -> None:
    for k in shots:
        if k <= 0:
            raise UserError(f"--shots must be positive integers (got {k})")
    for s in seeds:
        if s < 0:
            raise UserError(f"--seeds must be >= 0 (got {s})")


def prepare(name: str, root: Path, from_dir: Path | None = None, shots: Sequence[int] = (),
            seeds: Sequence[int] = (1, 2, 3), force: bool = False, say: Say = lambda m: None,
            progress: fetch.Progress | None = None, spec: DatasetSpec | None = None) -> tuple[PreparedDataset, dict]:
    spec = spec or catalog.get_spec(name, root)
    check_draws(shots, seeds)
    if from_dir is not None and not Path(from_dir).is_dir():
        raise UserError(f"--from {from_dir}: no such folder")
    root = Path(root)
    from cpbench.paths import check_folder, chosen_by

    check_folder(root, chosen_by(root, "--root", "CPBENCH_DATA"))
    ddir = dataset_dir(spec, root)
    lock = root / ".locks" / f"{spec.name}.lock"
    downloads = root / ".downloads"
    created = [p for p in (root, lock.parent, ddir, downloads, downloads / spec.name) if not p.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        if spec.task == "retrieval":  # image-caption datasets: cpbench/data/captions.py
            from cpbench.data import captions

            with locks.held(lock, waiting=_waiting(spec.name, say)):
                return captions.prepare(spec, root, from_dir, shots, seeds, force, say, progress)
        ds, info = _prepare_locked(spec, root, ddir, from_dir, force, say, progress, lock)
    except BaseException:
        _tidy_after_failure(created, ddir, lock)
        raise
    # the dataset is prepared (and stays so) even when --shots asks for more than a class has
    checks.require_shots(spec.name, ds.split, shots)
    fewshot = {}
    for k in shots:
        for s in seeds:
            fs = ds.fewshot(k, s, write=True)
            fewshot[f"{k}-shot seed {s}"] = (len(fs.train), len(fs.val))
    note = dassl_fewshot_note(root, [spec.name], shots, seeds)
    if note:  # the user's own CoOp draws stand in for cpbench's: said once
        say(note)
    info["fewshot"] = fewshot
    return ds, info


def _waiting(name: str, say: Say) -> Callable[[str], None]:
    return lambda who: say(f"waiting for another prepare of {name} to finish (it holds the lock: {who})")


def _prepare_locked(spec: DatasetSpec, root: Path, ddir: Path, from_dir: Path | None, force: bool, say: Say,
                    progress: fetch.Progress | None, lock: Path) -> tuple[PreparedDataset, dict]:
    with locks.held(lock, waiting=_waiting(spec.name, say)):
        marker = ddir / MARKER

        def digest() -> str:
            from cpbench.data.toy.datasets import definition_digest

            return definition_digest(spec.name)

        info = current_record(spec, ddir, force, digest, say)
        if info:
            split = _read_split(spec, ddir)
            counts = check_counts(spec, split)
            info["skipped"] = True
        else:
            marker.unlink(missing_ok=True)
            started = time.time()
            # generated data is cheap to regenerate and may be stale, so it is never adopted
            adopted = None if force or spec.kind == "generated" else _existing_coop(spec, ddir)
            if adopted is not None:
                say("found a complete CoOp-layout folder; verifying it instead of downloading")
                sources = {"existing": str(ddir)}
            elif spec.kind == "generated":
                from cpbench.data.toy.datasets import build_toy_dataset, definition_digest

                say(f"generating {spec.name}")
                build_toy_dataset(spec.name, ddir, seed=0,
                                  progress=(lambda d, t: progress(spec.name, d, t)) if progress else None)
                sources = {"generated": {"seed": 0, "definition": definition_digest(spec.name)}}
            elif spec.kind == "manual":
                sources = _manual_source(spec, ddir, from_dir)
            elif spec.kind == "custom":
                sources = {"custom": str(ddir)}
            else:
                sources = fetch_sources(spec, ddir, root, from_dir, say, progress)
            from cpbench.data.specs import IMAGENET_FAMILY

            if spec.name in IMAGENET_FAMILY:
                from cpbench.data import readers

                readers.write_classnames(ddir)
            split = _read_split(spec, ddir, use_cache=False)
            counts = check_counts(spec, split)
            checks.require_classes(spec.name, split)
            missing = missing_files(ddir / spec.image_dir, split, limit=5)
            if missing:
                raise UserError(f"{spec.name}: {len(missing)}+ images named by the split file are missing "
                                f"(first: {missing[0]}); the archive does not match the split file")
            _require_decodable(spec, ddir, split, sources)
            if spec.read_split is not None:
                splits.write_split(ddir / SPLIT_CACHE, split)
            info = write_record(ddir, {"dataset": spec.name, "split_sha256": splits.split_hash(split),
                                       "counts": counts, "sources": sources}, started)
        info["counts"] = counts
        return PreparedDataset(spec, ddir, split), info


def _require_decodable(spec: DatasetSpec, ddir: Path, split: splits.Split, sources: dict) -> None:
    """Images adopted without an official checksum (an existing CoOp folder, an archive given with
    --from whose checksum is unknown or differs) are all decoded before the dataset is marked ready;
    checksum-verified archives are the official bytes. ImageNet's folders (millions of files) are
    left to ``--check``."""
    checked = [v.get("checksum") for v in sources.values() if isinstance(v, dict) and "checksum" in v]
    if not ("existing" in sources or any(c != "ok" for c in checked)):
        return
    bad = unreadable_files(ddir / spec.image_dir, split)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        where = "the folder" if "existing" in sources else "the archive given with --from"
        raise UserError(f"{spec.name}: {len(bad)} image(s) do not decode ({shown}); {where} is damaged or not the "
                        "official release: replace it with an intact copy and prepare again")


def unreadable_files(image_root: Path, split: splits.Split, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Images that exist but cannot be decoded (truncated, not an image), by split path."""
    from cpbench.data.decode import undecodable

    seen: set[str] = set()
    paths = [it.path for it in (*split.train, *split.val, *split.test) if not (it.path in seen or seen.add(it.path))]
    return undecodable(image_root, [p for p in paths if (image_root / p).is_file()], progress)


def check(name: str, root: Path, spec: DatasetSpec | None = None, decode: bool = True) -> dict:
    """Verify a prepared dataset: counts against the spec, missing and unreadable images.

    Returns ``{"counts", "missing", "unreadable", "ok"}``; never modifies the dataset."""
    spec = spec or catalog.get_spec(name, root)
    ddir = dataset_dir(spec, Path(root))
    if spec.task == "retrieval":  # an image-caption dataset: its images, its caption counts
        from cpbench.data import captions

        ds = captions.load(name, root, spec)
        split, image_root, count = ds.split.images(), ds.image_root, lambda: captions.counts(spec, ds.split)
    else:
        if spec.split_file is None and spec.read_split is None:
            raise UserError(f"{name}: nothing to check")
        if not ddir.is_dir():
            raise UserError(f"dataset {name!r} is not under {root}; run `cpbench prepare {name} --root {root}`")
        split, image_root = _read_split(spec, ddir), ddir / spec.image_dir
        count = lambda: check_counts(spec, split)  # noqa: E731
    problems = []
    try:
        counts = count()
    except UserError as exc:
        problems.append(str(exc))
        counts = {}
    missing = missing_files(image_root, split)
    unreadable = unreadable_files(image_root, split) if decode else []
    return {"counts": counts, "missing": missing, "unreadable": unreadable, "problems": problems,
            "ok": not (missing or unreadable or problems)}


# --------------------------------------------------------------------------- ``cpbench prepare``


@dataclass(frozen=True)
class OwnData:
    """A dataset of your own (``--from-folder`` and/or ``--csv``; ``custom.py`` has the rules)."""
    folder: Path | None = None
    csv_file: Path | None = None
    classnames_file: Path | None = None
    template: str = "a photo of a {}."
    split_file: Path | None = None
    split_seed: int = 1
    skip_bad: bool = False  # --skip-bad-images: leave out (and count) files that do not decode


def dataset_names(dataset: str, root: Path) -> list[str]:
    """``all``: every downloadable dataset; ``toy``: every dataset of the embedded toy world; else
    the one name (an unknown name is one line)."""
    if dataset == "all":
        names = [n for n, s in catalog.all_specs().items() if s.kind == "download"]
    elif dataset == "toy":
        names = [n for n, s in catalog.all_specs().items() if s.kind == "generated"]
    else:
        names = [dataset]
    for name in names:
        catalog.get_spec(name, root)
    return names


def counts_text(c: dict) -> str:
    if "captions" in c:  # an image-caption dataset
        return f"train {c['train']} / test {c['test']} images, {c['captions']} test captions"
    return f"train {c['train']} / val {c['val']} / test {c['test']}, {c['classes']} classes"


def prepared_lines(name: str, ds, info: dict) -> list[str]:
    """What ``cpbench prepare`` says about a prepared dataset: where, its counts, its few-shot files."""
    c = info["counts"]
    state = "already prepared, verified" if info.get("skipped") else "prepared"
    base_new = f", base {c['base']} / new {c['new']}" if "base" in c else ""
    return [f"{name}: {state} in {ds.dir} — {counts_text(c)}{base_new}",
            *(f"  {key}: train {ntr} / val {nva}" for key, (ntr, nva) in info.get("fewshot", {}).items())]


def check_datasets(dataset: str, names: list[str], root: Path, show: Callable[[str], None]) -> None:
    """``cpbench prepare NAME --check``: every named dataset re-verified (``all``: the prepared ones);
    one line per result or problem, then one error if any failed."""
    bad = []
    for name in names:
        spec = catalog.get_spec(name, root)
        if dataset == "all" and not folders.is_prepared(spec, root):
            continue
        r = check(name, root)
        if r["ok"]:
            show(f"{name}: ok — {counts_text(r['counts'])}")
            continue
        bad.append(spec)
        for p in r["problems"]:
            show(f"{name}: {p}")
        for kind in ("missing", "unreadable"):
            for path in r[kind]:
                show(f"{name}: {kind}: {path}")
    if bad:
        fixes = "; ".join(f"{spec.name}: {check_repair(spec, root)}" for spec in bad)
        raise UserError(f"{len(bad)} dataset(s) failed the check; {fixes}")


def check_repair(spec: DatasetSpec, root: Path) -> str:
    """What repairs a dataset that failed ``--check``, as a command that works as written: downloaded
    data is extracted again from its kept archives and toy data regenerated (``--force``); your own
    data is adopted again from your files (a file that still does not decode is then named)."""
    if spec.kind == "manual":
        return f"replace the named files in {dataset_dir(spec, root) / spec.image_dir} with intact copies"
    if spec.kind == "custom":  # a file damaged in your folder too (hard links) is named, with --skip-bad-images
        return repair_hint(spec, root).replace("to rebuild it", "to adopt your files again")
    return repair_hint(spec, root).replace("to rebuild it", "to repair it")


def prepare_datasets(dataset: str, root: Path, from_dir: Path | None = None, shots: Sequence[int] = (),
                     seeds: Sequence[int] = (1, 2, 3), force: bool = False, check: bool = False,
                     own: OwnData | None = None, *, say: Callable[[str, str], None], show: Callable[[str], None],
                     warn: Callable[[str], None], progress: Callable[[], object] | None = None) -> None:
    """``cpbench prepare``: one dataset, ``all``/``toy`` (one failure does not stop the others: they
    are named at the end), a dataset of your own (``own``), or with ``check`` a re-verification.
    ``say(name, text)``: what is being done; ``show(line)``: a result; ``warn(text)``: a failure the
    others go on after; ``progress()``: a context manager giving each dataset a byte progress callback."""
    check_draws(shots, seeds)
    if own is not None:
        from cpbench.data.custom import make_custom

        spec = make_custom(dataset, root, own.folder, own.csv_file, own.classnames_file, own.template, own.split_file,
                           own.split_seed, builtin=tuple(catalog.all_specs()), shots=tuple(shots),
                           skip_bad=own.skip_bad, say=lambda m: say(dataset, m))
        ds, info = prepare(dataset, root, shots=shots, seeds=seeds, force=True, say=lambda m: say(dataset, m), spec=spec)
        for line in prepared_lines(dataset, ds, info):
            show(line)
        return
    names = dataset_names(dataset, root)
    if check:
        return check_datasets(dataset, names, root, show)
    failed = []
    for name in names:
        try:
            with (progress() if progress else contextlib.nullcontext()) as bar:
                ds, info = prepare(name, root, from_dir, shots, seeds, force=force, say=lambda m: say(name, m),
                                   progress=bar)
        except UserError as exc:
            if len(names) == 1:
                raise
            failed.append(name)  # `all`: go on with the others, report at the end
            warn(str(exc))
            continue
        for line in prepared_lines(name, ds, info):
            show(line)
    if failed:
        raise UserError(f"{len(failed)} dataset(s) not prepared ({', '.join(failed)}); see the messages above")
