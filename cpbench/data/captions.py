"""Image-caption datasets for few-shot image-text retrieval (CPL, He et al. EMNLP'22): Flickr30k
and MSCOCO with the Karpathy splits, and the toy world's ``toy_captions``.

A captioned dataset is a ``DatasetSpec`` with ``task="retrieval"`` whose ``read_split`` returns a
``CaptionSplit`` (``caption_splits.py``): the images few-shot pairs are drawn from (``train``) and
the test images, each with its captions. The annotation file is Karpathy's ``dataset_<name>.json`` (``images[]`` with
``filepath``, ``filename``, ``split`` and ``sentences[].raw``), the format CPL reads
(``dataset_processing/<name>/split.py`` in eric-ai-lab/CPL); the toy world writes the same
format.

CPL's choices, restated (not copied):
- few-shot pairs: n images drawn from the pool as ``pandas.DataFrame.sample(n, random_state=seed)``
  does (``numpy.random.RandomState(seed).choice(len(pool), n, replace=False)``, in that order), and
  for each one caption, index ``random.randint(0, 4)`` of a ``random`` seeded with the same seed;
  the pool is Karpathy's ``train`` split for Flickr30k (n = 145, 290, 870, 1450 for 0.5/1/3/5 %)
  and its ``val`` split for MSCOCO (n = 414, 828, 2483, 4139), as CPL's split scripts;
- test: Karpathy's ``test`` split, every image with its first five captions (Flickr30k captions
  cut at 265 characters, MSCOCO's stripped, as the scripts). CPL scores image-to-text R@1 on one
  query per image; cpbench reports R@1/5/10 in both directions on the same images and captions.

Prepared like the classification datasets (``cpbench prepare NAME``: fetch or ``--from``, verify,
extract, a marker written last), with a compact split cache and portable few-shot pair files.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cpbench import atomic
from cpbench.data import catalog, folders
from cpbench.data.caption_splits import CaptionSplit, sample_pairs, split_hash
from cpbench.errors import UserError

SPLIT_CACHE = ".cpbench_captions.json"


@dataclass(frozen=True)
class CaptionedDataset:
    spec: object  # DatasetSpec with task="retrieval"
    dir: Path
    split: CaptionSplit

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def image_root(self) -> Path:
        return self.dir / self.spec.image_dir if self.spec.image_dir else self.dir

    @property
    def cache_tag(self) -> str:
        try:
            record = (self.dir / folders.MARKER).read_bytes()
        except OSError:
            record = b""
        digest = hashlib.sha256(record + b"\0" + str(self.dir.resolve()).encode("utf-8", "surrogateescape"))
        return f"{self.name}@{digest.hexdigest()[:12]}"

    def pairs(self, n: int, seed: int, write: bool = False) -> list[tuple[str, str]]:
        """The few-shot training pairs: ``prepare``'s portable JSON file (keyed by split hash, n and
        seed), else drawn in memory (deterministic; a run never writes under the data root). A file
        that does not read is one line naming it; ``write`` (``prepare`` only) stores the draw."""
        digest = split_hash(self.split)
        path = self.dir / "split_fewshot" / f"pairs_{n}-seed_{seed}-{digest[:12]}.json"
        if path.exists() and not write:
            repair = (f"run `cpbench prepare {self.name} --shots {n} --seeds {seed} --root {self.dir.parent}` "
                      "to draw it again")
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
                pairs = obj["pairs"] if isinstance(obj, dict) else None
                if not isinstance(pairs, list) or not all(
                        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
                    raise ValueError("pairs is not a list of [image, caption]")
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"cannot read few-shot pairs file {path} ({exc.__class__.__name__}); {repair}") from None
            if obj.get("split_sha256") == digest:
                return [(p, c) for p, c in pairs]
        pairs = sample_pairs(self.split, n, seed)
        if write:
            atomic.write_json(path, {"dataset": self.name, "split_sha256": digest, "shots": n, "seed": seed,
                                     "algorithm": "CPL split.py: RandomState(seed).choice(pool, n) images, "
                                                  "random.Random(seed).randint(0, 4) caption each",
                                     "pairs": [list(p) for p in pairs]})
        return pairs


def _read(spec, ddir: Path, use_cache: bool = True) -> CaptionSplit:
    cache = ddir / SPLIT_CACHE
    if use_cache and cache.is_file():
        try:
            return CaptionSplit.from_json(json.loads(cache.read_text(encoding="utf-8")), str(cache))
        except (OSError, ValueError):
            pass
    return spec.read_split(ddir)


def counts(spec, split: CaptionSplit) -> dict:
    got = {"train": len(split.train), "val": 0, "test": len(split.test),
           "captions": sum(len(p.captions) for p in split.test)}
    for key in ("train", "test"):
        want = getattr(spec.expected, key)
        if want is not None and want != got[key]:
            raise UserError(f"{spec.name}: {key} has {got[key]} images, expected {want}; the files differ from the "
                            f"official release (delete {spec.folder}/ and prepare again)")
    return got


def load(name: str, root: Path, spec=None) -> CaptionedDataset:
    spec = spec or catalog.get_spec(name, root)
    if spec.task != "retrieval":
        raise UserError(f"{name} is a classification dataset; --protocol retrieval needs an image-caption dataset "
                        "(flickr30k, mscoco, toy_captions)")
    ddir = folders.dataset_dir(spec, root)
    if not (ddir / folders.MARKER).exists():
        raise UserError(f"dataset {name!r} is not prepared under {root}; run `cpbench prepare {name} --root {root}`")
    return CaptionedDataset(spec, ddir, _read(spec, ddir))


def prepare(spec, root: Path, from_dir: Path | None, shots: Sequence[int], seeds: Sequence[int], force: bool,
            say, progress) -> tuple[CaptionedDataset, dict]:
    """``cpbench prepare`` for an image-caption dataset (called by ``data.prepare.prepare``, which
    holds the dataset's lock): generate or fetch, read and verify, write the marker last."""
    from cpbench.data.toy.captions import build_toy_captions, definition_digest

    ddir = folders.dataset_dir(spec, root)
    info = folders.current_record(spec, ddir, force, definition_digest, say)
    if info:
        split = _read(spec, ddir)
        got = counts(spec, split)
        info["skipped"] = True
    else:
        (ddir / folders.MARKER).unlink(missing_ok=True)
        started = time.time()
        if spec.kind == "generated":
            say(f"generating {spec.name}")
            build_toy_captions(ddir, seed=0, progress=(lambda d, t: progress(spec.name, d, t)) if progress else None)
            sources = {"generated": {"seed": 0, "definition": definition_digest()}}
        else:
            sources = folders.fetch_sources(spec, ddir, root, from_dir, say, progress)
        split = _read(spec, ddir, use_cache=False)
        got = counts(spec, split)
        image_root = ddir / spec.image_dir if spec.image_dir else ddir
        missing = folders.missing_files(image_root, split.images(), limit=5)
        if missing:
            raise UserError(f"{spec.name}: {len(missing)}+ images named by the caption file are missing "
                            f"(first: {missing[0]}); the image archive does not match the caption file")
        atomic.write_json(ddir / SPLIT_CACHE, split.to_json())
        info = folders.write_record(ddir, {"dataset": spec.name, "task": "retrieval",
                                           "split_sha256": split_hash(split), "counts": got, "sources": sources},
                                    started)
    ds = CaptionedDataset(spec, ddir, split)
    info["counts"] = got
    info["fewshot"] = {f"{k} pairs seed {s}": (len(ds.pairs(k, s, write=True)), 0) for k in shots for s in seeds}
    return ds, info

