"""``toy_captions``: an image-caption dataset of the toy world, for few-shot retrieval.

Every image is a random toy scene (one object, or two with probability 0.3, as in pretraining)
that holds at least one attribute combination pretraining never shows (the toy classification
datasets' held-out compositions): the words are known, the combination is new, so zero-shot
retrieval leaves headroom as it does on a real caption set. Each image has five captions drawn
from the world's caption generator (the language pretraining saw: "a small red striped
triangle.", "a photo of a circle and a heart.", ...). Written in Karpathy's format
(``dataset_toy_captions.json``), so it is read exactly as Flickr30k and MSCOCO are. Deterministic:
the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cpbench.data.toy.world import IMAGE_SIZE, WORLD_VERSION, caption, render, sample_scene

ANNOTATIONS = "dataset_toy_captions.json"


@dataclass(frozen=True)
class ToyCaptions:
    name: str = "toy_captions"
    n_train: int = 200       # the pool few-shot pairs are drawn from
    n_test: int = 100
    captions: int = 5
    p_two: float = 0.3


TOY_CAPTIONS = ToyCaptions()


def definition_digest(ds: ToyCaptions | None = None) -> str:
    ds = ds or TOY_CAPTIONS
    blob = json.dumps({"world": WORLD_VERSION, "image_size": IMAGE_SIZE, "definition": dataclasses.asdict(ds)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _scene(ds: ToyCaptions, seed: int, split: str, index: int):
    from cpbench.data.toy.datasets import pretraining_holdout

    holdout = pretraining_holdout()
    rng = np.random.default_rng([seed, zlib.crc32(ds.name.encode()), ("train", "test").index(split), index])
    while True:  # about one scene in four holds a held-out combination
        scene = sample_scene(rng, n_objects=2 if rng.random() < ds.p_two else 1)
        if not holdout.allows(scene):
            return scene, rng


def build_toy_captions(dest_dir: Path, seed: int = 0, ds: ToyCaptions | None = None,
                       progress: Callable[[int, int], None] | None = None) -> None:
    """Write ``dest_dir/images/<split>_<i>.png`` and ``dest_dir/dataset_toy_captions.json``."""
    ds = ds or TOY_CAPTIONS
    dest_dir = Path(dest_dir)
    (dest_dir / "images").mkdir(parents=True, exist_ok=True)
    images, total, done = [], ds.n_train + ds.n_test, 0
    for split, count in (("train", ds.n_train), ("test", ds.n_test)):
        for i in range(count):
            scene, rng = _scene(ds, seed, split, i)
            name = f"{split}_{i:04d}.png"
            Image.fromarray(render(scene)).save(dest_dir / "images" / name, format="PNG")
            images.append({"filepath": "", "filename": name, "split": split, "imgid": len(images),
                           "sentences": [{"raw": caption(scene, rng)} for _ in range(ds.captions)]})
            done += 1
            if progress is not None and (done % 50 == 0 or done == total):
                progress(done, total)
    target = dest_dir / ANNOTATIONS
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"dataset": ds.name, "images": images}) + "\n", encoding="utf-8")
    os.replace(tmp, target)
