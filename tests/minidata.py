"""A miniature prepared caltech101 (a few classes x a few 8-px images) for fast resume, fault,
launcher and bad-input tests: images + the CoOp split json + the ``.cpbench.json`` marker, which
is all ``prepare.load`` needs. Deterministic (seeded pixels)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

CLASSES = ("accordion", "airplane", "anchor", "ant")


def make_caltech(root: Path, n_train: int = 4, n_val: int = 1, n_test: int = 3, classes=CLASSES) -> Path:
    ddir = Path(root) / "caltech-101"
    img_root = ddir / "101_ObjectCategories"
    rng = random.Random(0)
    split = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(classes):
        (img_root / cname).mkdir(parents=True, exist_ok=True)
        base = (40 * label % 256, 90 * label % 256, 160)
        i = 0
        for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(n):
                rel = f"{cname}/image_{i:04d}.jpg"
                px = [tuple(min(255, max(0, c + rng.randint(-30, 30))) for c in base) for _ in range(64)]
                im = Image.new("RGB", (8, 8))
                im.putdata(px)
                im.save(img_root / rel, quality=95)
                split[part].append([rel, label, cname])
                i += 1
    (ddir / "split_zhou_Caltech101.json").write_text(json.dumps(split), encoding="utf-8")
    (ddir / ".cpbench.json").write_text(json.dumps({"name": "caltech101", "mini": True}), encoding="utf-8")
    return ddir
