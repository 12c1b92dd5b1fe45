"""Splits in the CoOp format, CoOp-identical few-shot sampling and base/new subsetting.

A split file (``split_zhou_<Name>.json``) is ``{"train": [...], "val": [...], "test": [...]}``
with entries ``[relative_image_path, label, classname]``; it is read and written as is.

Few-shot sampling restates Dassl's ``DatasetBase.generate_fewshot_dataset``: items are grouped
by label in first-appearance order, each group is ``random.sample``d (all items kept when a
class has fewer than k), train is drawn before val from the same ``random`` stream seeded with
the run seed, and val gets ``min(k, 4)`` shots.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpbench import atomic
from cpbench.errors import UserError


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset's image dir
    label: int
    classname: str

    def as_list(self) -> list:
        return [self.path, self.label, self.classname]


@dataclass(frozen=True)
class Split:
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    test: tuple[Item, ...]

    @property
    def classnames(self) -> list[str]:
        """Class names in label order, from every part of the split."""
        names: dict[int, str] = {}
        for item in (*self.train, *self.val, *self.test):
            names.setdefault(item.label, item.classname)
        return [names[k] for k in sorted(names)]

    def to_json(self) -> dict:
        return {k: [i.as_list() for i in getattr(self, k)] for k in ("train", "val", "test")}


REDOWNLOAD = "re-download the split file"


def _items(rows, where: str, repair: str = REDOWNLOAD) -> tuple[Item, ...]:
    if not isinstance(rows, list):
        raise UserError(f"{where}: expected a list of [path, label, classname] entries, found "
                        f"{type(rows).__name__} {_short(rows)}; {repair}")
    out = []
    for row in rows:
        if not (isinstance(row, (list, tuple)) and len(row) == 3):
            raise UserError(f"{where}: entry {_short(row)} is not [path, label, classname]; {repair}")
        path, label, name = row
        if not isinstance(path, str) or isinstance(label, bool) or not isinstance(label, int) or not isinstance(name, str):
            raise UserError(f"{where}: entry {_short(row)} has the wrong types; {repair}")
        out.append(Item(path, label, name))
    return tuple(out)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def split_from_json(obj: dict, where: str = "split", repair: str = REDOWNLOAD) -> Split:
    """A split from its JSON object, validated structurally: every problem is one line naming
    ``where`` (the file) and ``repair`` (what rebuilds it)."""
    if not isinstance(obj, dict) or any(k not in obj for k in ("train", "val", "test")):
        raise UserError(f"{where}: not a CoOp split (needs train/val/test lists); {repair}")
    split = Split(*(_items(obj[k], f"{where} [{k}]", repair) for k in ("train", "val", "test")))
    _check_classes(split, where, repair)
    return split


def _check_classes(split: Split, where: str, repair: str = REDOWNLOAD) -> None:
    """One class name per label, names that are valid text, and no val/test class missing from train."""
    names: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for it in getattr(split, part):
            if names.setdefault(it.label, it.classname) != it.classname:
                raise UserError(f"{where}: label {it.label} is named both {names[it.label]!r} and {it.classname!r}; "
                                "re-download the split file")
            try:
                it.classname.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{where}: class name {it.classname!r} is not valid UTF-8 text; {repair}") from None
    if split.train:
        have = {it.label for it in split.train}
        for part in ("val", "test"):
            missing = sorted({(it.label, it.classname) for it in getattr(split, part) if it.label not in have})
            if missing:
                shown = ", ".join(n for _, n in missing[:5])
                raise UserError(f"{where}: {part} has class(es) missing from train ({shown}); {repair}")


def read_split(path: str | Path, repair: str = REDOWNLOAD) -> Split:
    """The split in ``path``; an unreadable, truncated or malformed file is one line naming it and
    ``repair`` (e.g. "run `cpbench prepare NAME --force`", which rebuilds it)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read split file {path} ({_reason(exc)}); {repair}") from None
    return split_from_json(obj, str(path), repair)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def write_split(path: str | Path, split: Split) -> None:
    atomic.write_text(path, json.dumps(split.to_json()) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_hash(split: Split) -> str:
    """Content hash of a split (independent of JSON formatting)."""
    return hashlib.sha256(json.dumps(split.to_json(), separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- few-shot


def sample_fewshot(items: Sequence[Item], k: int, rng: random.Random) -> list[Item]:
    """Dassl's per-class ``random.sample`` in first-appearance label order (repeat=False)."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out: list[Item] = []
    for group in groups.values():
        out.extend(rng.sample(group, k) if len(group) >= k else group)
    return out


@dataclass(frozen=True)
class FewShot:
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    shots: int
    seed: int
    # where the images came from: "cpbench" (drawn here), DASSL_SAME (CoOp's pkl file, the very
    # images cpbench draws) or "dassl-pkl:<digest>" (CoOp's pkl file, other images: another setting)
    source: str = "cpbench"


DASSL_SAME = "dassl-pkl (= cpbench draw)"
DATUM = "dassl.data.datasets.base_dataset.Datum"


def dassl_fewshot_path(dataset_dir: Path, shots: int, seed: int) -> Path:
    """Where CoOp's dataset classes keep a draw: ``split_fewshot/shot_{k}-seed_{s}.pkl``."""
    return Path(dataset_dir) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def images_digest(train: Sequence[Item], val: Sequence[Item]) -> str:
    """Content hash of a few-shot draw (its train and val lists, in order)."""
    blob = json.dumps([[i.as_list() for i in train], [i.as_list() for i in val]], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _datum_items(data, key: str, index: dict[str, Item], where: str) -> tuple[Item, ...]:
    """The split's items that the Datum list ``data[key]`` names, in its order. A Datum's path is
    absolute on the machine that wrote it, so it is matched on its longest tail that is an image
    path of the split; its label and class name must be the split's."""
    from cpbench.state.unpickle import Record

    out = []
    for d in data.get(key) or []:
        state = d.state if isinstance(d, Record) else None
        if not isinstance(state, dict) or not isinstance(state.get("_impath"), str):
            raise UserError(f"{where}: [{key}] holds {type(d).__name__}, not a Dassl Datum; remove the file to let "
                            "cpbench draw the shots")
        parts = state["_impath"].replace("\\", "/").split("/")
        item = next((index[t] for t in ("/".join(parts[n:]) for n in range(len(parts))) if t in index), None)
        if item is None:
            raise UserError(f"{where}: [{key}] lists {state['_impath']}, which is not an image of this dataset's "
                            "split; use the data folder the file was made for, or remove it to let cpbench draw")
        if state.get("_label") != item.label or state.get("_classname", item.classname) != item.classname:
            raise UserError(f"{where}: {item.path} is label {state.get('_label')!r} ({state.get('_classname')!r}) "
                            f"there but {item.label} ({item.classname!r}) in the split; the file belongs to "
                            "another split: remove it to let cpbench draw")
        out.append(item)
    return tuple(out)


def read_dassl_fewshot(path: Path, split: Split, shots: int, seed: int, val_is_test: bool = False) -> FewShot:
    """CoOp's few-shot pickle (``{"train": [Datum…], "val": [Datum…]}``; ImageNet's has no val)
    as the split's items, in the file's order; read with the allow-list unpickler (no code runs)."""
    import pickle

    from cpbench.state import unpickle

    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = unpickle.load(fh, {DATUM: unpickle.Record}, where,
                                 "a CoOp few-shot file holds only Dassl Datum objects")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"cannot read CoOp few-shot file {where} ({exc.__class__.__name__}); remove it to let "
                        "cpbench draw the shots") from None
    if not isinstance(data, dict) or "train" not in data:
        raise UserError(f"{where}: not a CoOp few-shot file (a dict with train/val Datum lists); remove it to let "
                        "cpbench draw the shots")
    index = {i.path: i for i in (*split.train, *split.val)}
    train = _datum_items(data, "train", index, where)
    val = () if val_is_test else _datum_items(data, "val", index, where)
    drawn = make_fewshot(split, shots, seed, val_is_test)
    same = (train, val) == (drawn.train, drawn.val)
    return FewShot(train, val, shots, seed, DASSL_SAME if same else f"dassl-pkl:{images_digest(train, val)[:12]}")


def make_fewshot(split: Split, shots: int, seed: int, val_is_test: bool = False) -> FewShot:
    """Draw the k-shot train and min(k,4)-shot val sets exactly as CoOp does for ``seed``.

    ``shots < 1`` keeps the full train/val lists (the cross-dataset/DG evaluation setting).
    """
    if shots < 1:
        return FewShot(split.train, split.val, shots, seed)
    rng = random.Random(seed)
    train = sample_fewshot(split.train, shots, rng)
    val = [] if val_is_test else sample_fewshot(split.val, min(shots, 4), rng)
    return FewShot(tuple(train), tuple(val), shots, seed)


def fewshot_path(dataset_dir: Path, split_digest: str, shots: int, seed: int) -> Path:
    return dataset_dir / "split_fewshot" / f"shot_{shots}-seed_{seed}-{split_digest[:12]}.json"


def read_fewshot(path: Path, digest: str, shots: int, seed: int, repair: str) -> FewShot | None:
    """The draw stored in ``path``, None when the file is absent or belongs to another split; a file
    that is unreadable or malformed is one line naming it and ``repair``."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read few-shot file {path} ({_reason(exc)}); {repair}") from None
    if not isinstance(obj, dict) or not all(k in obj for k in ("split_sha256", "shots", "seed", "train", "val")):
        raise UserError(f"few-shot file {path} lacks split_sha256/shots/seed/train/val; {repair}")
    if obj["split_sha256"] != digest or obj["shots"] != shots or obj["seed"] != seed:
        return None  # drawn from another split: draw again (the draw is deterministic)
    return FewShot(_items(obj["train"], f"{path} [train]", repair), _items(obj["val"], f"{path} [val]", repair),
                   shots, seed)


def load_or_make_fewshot(dataset_dir: Path, name: str, split: Split, shots: int, seed: int,
                         val_is_test: bool = False, write: bool = False, repair: str = "") -> FewShot:
    """The k-shot draw of ``seed``: CoOp's own few-shot file when the folder has one
    (``dassl_fewshot_path``); else read from its portable file (relative paths, JSON, keyed by split
    hash, k and seed) when ``prepare`` wrote one, else drawn in memory (the draw is deterministic, so a
    run never writes under a data root that may be read-only). ``write`` (``prepare``, the data
    root's only writer) stores the draw, replacing an unreadable file."""
    dassl = dassl_fewshot_path(dataset_dir, shots, seed)
    if shots >= 1 and dassl.is_file():
        return read_dassl_fewshot(dassl, split, shots, seed, val_is_test)
    digest = split_hash(split)
    path = fewshot_path(dataset_dir, digest, shots, seed)
    repair = repair or f"run `cpbench prepare {name} --shots {shots} --seeds {seed}` to draw it again"
    try:
        fs = read_fewshot(path, digest, shots, seed, repair)
    except UserError:
        if not write:
            raise
        fs = None  # prepare repairs it
    if fs is not None:
        return fs
    fs = make_fewshot(split, shots, seed, val_is_test)
    if write:
        atomic.write_json(path, {
            "dataset": name, "split_sha256": digest, "shots": shots, "seed": seed,
            "algorithm": "dassl generate_fewshot_dataset (random.Random(seed).sample per class, train then val=min(k,4))",
            "train": [i.as_list() for i in fs.train], "val": [i.as_list() for i in fs.val],
        })
    return fs


# --------------------------------------------------------------------------- base / new

SUBSETS = ("all", "base", "new")


def base_new_labels(train: Sequence[Item]) -> tuple[list[int], list[int]]:
    labels = sorted({i.label for i in train})
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def subsample_classes(subset: str, train: Sequence[Item], *others: Sequence[Item]) -> tuple[list[list[Item]], list[str]]:
    """CoOp's ``subsample_classes``: keep base (first ceil(n/2) sorted labels of ``train``) or new,
    relabel to 0..k-1 in sorted order. Returns the filtered lists (train first) and class names."""
    if subset not in SUBSETS:
        raise UserError(f"unknown subset {subset!r}; use one of {', '.join(SUBSETS)}")
    lists = [list(train), *[list(o) for o in others]]
    if subset == "all":
        names: dict[int, str] = {}
        for lst in lists:
            for i in lst:
                names.setdefault(i.label, i.classname)
        return lists, [names[k] for k in sorted(names)]
    base, new = base_new_labels(train)
    keep = base if subset == "base" else new
    relabel = {old: new_idx for new_idx, old in enumerate(keep)}
    out = [[Item(i.path, relabel[i.label], i.classname) for i in lst if i.label in relabel] for lst in lists]
    names = {}
    for lst in out:
        for i in lst:
            names.setdefault(i.label, i.classname)
    return out, [names.get(k, "") for k in range(len(keep))]
