"""The caption split of an image-caption dataset (``task="retrieval"``; the few-shot retrieval
protocol, cpbench/data/captions.py): the images few-shot pairs are drawn from (``train``) and the
test images, each with its captions; Karpathy's ``dataset_<name>.json`` reader (``images[]`` with
``filepath``, ``filename``, ``split`` and ``sentences[].raw``, the format CPL reads); CPL's few-shot
pair draw. The classification counterpart is ``splits.py``."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpbench.errors import UserError

CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class Pair:
    """An image (path relative to the dataset's image dir) and its captions."""
    path: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CaptionSplit:
    train: tuple[Pair, ...]   # the pool few-shot pairs are drawn from
    test: tuple[Pair, ...]

    def to_json(self) -> dict:
        return {k: [[p.path, list(p.captions)] for p in getattr(self, k)] for k in ("train", "test")}

    def images(self):
        """Every image as a classification ``Split`` (label 0, no name), for the image checks."""
        from cpbench.data.splits import Item, Split

        return Split(tuple(Item(p.path, 0, "") for p in self.train), (), tuple(Item(p.path, 0, "") for p in self.test))

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "CaptionSplit":
        try:
            return cls(*(tuple(Pair(str(p), tuple(str(c) for c in caps)) for p, caps in obj[k]) for k in ("train", "test")))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where} is not a caption split; prepare the dataset again with --force") from None


def read_karpathy(ddir: Path, annotations: str, pool: str = "train", strip: bool = False,
                  test_chars: int | None = None) -> CaptionSplit:
    """``CaptionSplit`` from Karpathy's ``dataset_<name>.json`` in ``ddir``."""
    path = Path(ddir) / annotations
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the dataset folder is incomplete: prepare the dataset again with --force") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a Karpathy caption file (images[] with sentences); fetch it again") from None

    def text(raw: str, test: bool) -> str:
        raw = raw.strip() if strip else raw
        return raw[:test_chars] if (test and test_chars) else raw

    parts: dict[str, list[Pair]] = {"train": [], "test": []}
    for img in images:
        part = "train" if img.get("split") == pool else "test" if img.get("split") == "test" else None
        if part is None:
            continue
        rel = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else img["filename"]
        caps = [text(s["raw"], part == "test") for s in img.get("sentences", [])]
        if len(caps) < CAPTIONS_PER_IMAGE:
            raise UserError(f"{path}: {rel} has {len(caps)} captions, fewer than {CAPTIONS_PER_IMAGE}; fetch the file again")
        parts[part].append(Pair(rel, tuple(caps[:CAPTIONS_PER_IMAGE] if part == "test" else caps)))
    return CaptionSplit(tuple(parts["train"]), tuple(parts["test"]))


def split_hash(split: CaptionSplit) -> str:
    return hashlib.sha256(json.dumps(split.to_json(), separators=(",", ":")).encode()).hexdigest()


def sample_pairs(split: CaptionSplit, n: int, seed: int) -> list[tuple[str, str]]:
    """CPL's few-shot draw: n pool images (pandas ``sample(n, random_state=seed)``), one caption
    each (``random.randint(0, 4)`` after ``random.seed(seed)``), in draw order."""
    if not 1 <= n <= len(split.train):
        raise UserError(f"--shots for retrieval is the number of training image-caption pairs: 1 to "
                        f"{len(split.train)} here, got {n}")
    picks = np.random.RandomState(seed).choice(len(split.train), n, replace=False)
    rng = random.Random(seed)
    return [(split.train[int(i)].path, split.train[int(i)].captions[rng.randint(0, CAPTIONS_PER_IMAGE - 1)])
            for i in picks]
