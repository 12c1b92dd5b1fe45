"""Classification datasets of the generated toy world, written as image files + CoOp split files.

Four datasets, each an analogue of a kind of real benchmark:

- ``toy_shapes`` (20 classes): the object's shape; pattern, size, position and background vary
  (a Caltech-like object task). Domain: every object is red.
- ``toy_colour_shapes`` (24): a colour and a shape ("red star"), a 4 colours x 6 shapes grid.
  None of these 24 combinations is ever shown in pretraining: the words are known, the
  combinations are new (compositional zero-shot). Domain: large checkered objects on black.
- ``toy_pattern_shapes`` (24): a surface pattern and a shape ("striped heart"), a 4 x 6 grid
  (a texture task); a quarter of the combinations are held out of pretraining. Domain: large
  blue objects on black.
- ``toy_scenes`` (24): which two shapes a scene holds ("circle and star"); pairs of 8 shapes,
  held out of pretraining (a multi-object scene task). Domain: both objects are green.

Domains play the part of a real dataset's photographic domain (satellite photos, close-ups of
textures): a value every image shares that neither the class names nor the default prompt "a
photo of a {}." mention, and that pretraining never shows together with some of the dataset's
shapes. Zero-shot prompts therefore meet unseen compositions and leave headroom, which a prompt
naming the domain (``domain_template``) or a learned context can recover, as CoOp's context
recovers it on EuroSAT or DTD.

Base-to-new: labels are ordered so that the base half (the first ceil(n/2) labels) and the new
half are comparable. In the grids they form a checkerboard, so every colour/pattern and every
shape word occurs in both halves and every new class is an unseen combination of seen words.
Generation is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from cpbench.data.toy.world import IMAGE_SIZE, WORLD_VERSION, Holdout, Scene, render, sample_scene

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ToyDataset:
    name: str  # CLI name, "toy_shapes"
    dassl_name: str  # CamelCase, used in the split file name
    folder: str  # dataset directory under the data root
    template: str  # zero-shot prompt template with "{}"
    classnames: tuple[str, ...]  # label order
    n_train: int  # images per class and split
    n_val: int
    n_test: int
    # sample_scene keyword arguments that define each class (same order as classnames)
    class_scenes: tuple[tuple[tuple[str, object], ...], ...] = ()
    # combinations never shown in pretraining
    held_out: Holdout = Holdout()
    # the dataset's domain: sample_scene keyword arguments shared by every image, named neither by
    # the class names nor by ``template`` (as "satellite photo" is not in "a photo of a {}.")
    domain: tuple[tuple[str, object], ...] = ()
    # a hand-written prompt that names the domain (a diagnostic of how much the words before the
    # class name can recover; CoOp has to find its own)
    domain_template: str = ""

    def scene(self, label: int, rng: np.random.Generator) -> Scene:
        return sample_scene(rng, **dict(self.class_scenes[label] + self.domain))

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    @property
    def n_base(self) -> int:
        return (len(self.classnames) + 1) // 2


# --- class lists --------------------------------------------------------------------------------

_SHAPE_CLASSES = (  # base: first 10, new: last 10 (each half mixes easy and confusable shapes)
    "circle", "triangle", "star", "cross", "hexagon", "crescent", "arrow", "trapezoid", "kite", "bolt",
    "square", "heart", "diamond", "pentagon", "octagon", "ring", "semicircle", "parallelogram",
    "teardrop", "hourglass",
)

_GRID_COLOURS = ("red", "orange", "pink", "purple")
_GRID_COLOUR_SHAPES = ("heart", "star", "hexagon", "kite", "crescent", "trapezoid")
_GRID_PATTERNS = ("striped", "dotted", "checkered", "wavy")
_GRID_PATTERN_SHAPES = ("circle", "square", "triangle", "diamond", "ring", "semicircle")

# held out of pretraining: one pattern per shape, a quarter of the grid, 3 cells in each half
_PATTERN_HELD_OUT = (("striped", "circle"), ("checkered", "square"), ("checkered", "triangle"),
                     ("dotted", "diamond"), ("wavy", "ring"), ("striped", "semicircle"))

# Domains (see ToyDataset.domain): every image of a dataset shares a colour or a pattern, and
# pretraining never shows that value together with (some of) the dataset's shapes, so the default
# prompt "a photo of a {}." meets an unseen composition, as CLIP's meets a satellite photo.
_SHAPES_DOMAIN = "red"  # red x the colour grid's 6 shapes is held out (5 base, 1 new toy_shapes class)
_COLOUR_SHAPES_DOMAIN = "checkered"
_COLOUR_SHAPES_DOMAIN_HELD = ("heart", "hexagon", "crescent")
_PATTERN_SHAPES_DOMAIN = "blue"  # blue x all 6 pattern-grid shapes held out
_SCENES_DOMAIN = "green"
_SCENES_DOMAIN_HELD = ("circle", "star", "square", "crescent")
# the two grid datasets are also shot "in a studio": one size, one background. Fewer nuisances
# let 16 labelled images show what the class words alone do not (measured with the shipped model:
# a text-initialised classifier trained on 16 shots gains 8.6 / 11.0 points over zero-shot on
# colour / pattern shapes with the studio, +2.7 / -4.4 without)
_STUDIO = (("size", "large"), ("background", "black"))

_SCENE_SHAPES = ("circle", "triangle", "star", "heart", "square", "cross", "crescent", "arrow")
# 24 pairs of 8 shapes (all but a perfect matching); each shape occurs 3 times in each half
_SCENE_BASE = ((0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 5), (2, 6), (3, 7), (4, 6), (4, 7), (5, 6), (5, 7))
_SCENE_NEW = ((0, 5), (0, 6), (0, 7), (1, 4), (1, 6), (1, 7), (2, 4), (2, 5), (2, 7), (3, 4), (3, 5), (3, 6))


def _checkerboard(rows: tuple[str, ...], cols: tuple[str, ...]) -> list[tuple[str, str]]:
    """Cells of rows x cols, base half (row+col even) first, then the new half."""
    cells = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    ordered = [c for c in cells if sum(c) % 2 == 0] + [c for c in cells if sum(c) % 2 == 1]
    return [(rows[i], cols[j]) for i, j in ordered]


def _held_with(value: str, shapes) -> frozenset[tuple[str, str]]:
    return frozenset((value, s) for s in shapes)


def _make_datasets() -> dict[str, ToyDataset]:
    sizes = {"n_train": 20, "n_val": 8, "n_test": 40}
    template = "a photo of a {}."
    shapes = ToyDataset(
        "toy_shapes", "ToyShapes", "toy_shapes", template, _SHAPE_CLASSES, **sizes,
        class_scenes=tuple((("shape", s),) for s in _SHAPE_CLASSES),
        held_out=Holdout(colour_shape=_held_with(_SHAPES_DOMAIN, _GRID_COLOUR_SHAPES)),
        domain=(("colour", _SHAPES_DOMAIN),), domain_template=f"a photo of a {_SHAPES_DOMAIN} {{}}.")

    colour_cells = _checkerboard(_GRID_COLOURS, _GRID_COLOUR_SHAPES)
    colour_shapes = ToyDataset(
        "toy_colour_shapes", "ToyColourShapes", "toy_colour_shapes", template,
        tuple(f"{c} {s}" for c, s in colour_cells), **sizes,
        class_scenes=tuple((("colour", c), ("shape", s)) for c, s in colour_cells),
        held_out=Holdout(colour_shape=frozenset(colour_cells),
                         pattern_shape=_held_with(_COLOUR_SHAPES_DOMAIN, _COLOUR_SHAPES_DOMAIN_HELD)),
        domain=(("pattern", _COLOUR_SHAPES_DOMAIN),) + _STUDIO,
        domain_template=f"a photo of a large {_COLOUR_SHAPES_DOMAIN} {{}} on a black background.")

    pattern_cells = _checkerboard(_GRID_PATTERNS, _GRID_PATTERN_SHAPES)
    pattern_shapes = ToyDataset(
        "toy_pattern_shapes", "ToyPatternShapes", "toy_pattern_shapes", template,
        tuple(f"{p} {s}" for p, s in pattern_cells), **sizes,
        class_scenes=tuple((("pattern", p), ("shape", s)) for p, s in pattern_cells),
        held_out=Holdout(pattern_shape=frozenset(_PATTERN_HELD_OUT),
                         colour_shape=_held_with(_PATTERN_SHAPES_DOMAIN, _GRID_PATTERN_SHAPES)),
        domain=(("colour", _PATTERN_SHAPES_DOMAIN),) + _STUDIO,
        domain_template=f"a photo of a large {_PATTERN_SHAPES_DOMAIN} {{}} on a black background.")

    pairs = [(_SCENE_SHAPES[i], _SCENE_SHAPES[j]) for i, j in _SCENE_BASE + _SCENE_NEW]
    scenes = ToyDataset(
        "toy_scenes", "ToyScenes", "toy_scenes", template, tuple(f"{a} and {b}" for a, b in pairs), **sizes,
        class_scenes=tuple((("shapes", p),) for p in pairs),
        held_out=Holdout(shape_pairs=frozenset(frozenset(p) for p in pairs),
                         colour_shape=_held_with(_SCENES_DOMAIN, _SCENES_DOMAIN_HELD)),
        domain=(("colour", _SCENES_DOMAIN),), domain_template=f"a photo of a {_SCENES_DOMAIN} {{}}.")
    return {d.name: d for d in (shapes, colour_shapes, pattern_shapes, scenes)}


TOY_DATASETS: dict[str, ToyDataset] = _make_datasets()


def definition_digest(name: str) -> str:
    """What a prepared copy of the dataset depends on: its definition and the world's version."""
    ds = TOY_DATASETS[name]
    blob = json.dumps({"world": WORLD_VERSION, "image_size": IMAGE_SIZE, "classnames": ds.classnames,
                       "class_scenes": ds.class_scenes, "domain": ds.domain,
                       "counts": [ds.count(s) for s in SPLITS]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretraining_holdout() -> Holdout:
    """Every combination that some toy dataset holds out of pretraining."""
    ds = TOY_DATASETS.values()
    return Holdout(colour_shape=frozenset().union(*(d.held_out.colour_shape for d in ds)),
                   pattern_shape=frozenset().union(*(d.held_out.pattern_shape for d in ds)),
                   shape_pairs=frozenset().union(*(d.held_out.shape_pairs for d in ds)))


# --- generation ---------------------------------------------------------------------------------


def _rng(ds: ToyDataset, seed: int, label: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(ds.name.encode()), label, SPLITS.index(split), index])


def split_scenes(ds: ToyDataset, split: str, seed: int = 0) -> Iterator[tuple[int, int, Scene]]:
    """(label, index, scene) for every image of one split, in label order."""
    for label in range(len(ds.classnames)):
        for i in range(ds.count(split)):
            yield label, i, ds.scene(label, _rng(ds, seed, label, split, i))


def split_images(ds: ToyDataset, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All images of one split in memory: uint8 (N, H, W, 3) and int64 labels. Same pixels as the
    files build_toy_dataset writes."""
    images, labels = [], []
    for label, _, scene in split_scenes(ds, split, seed):
        images.append(render(scene))
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def class_folder(classname: str) -> str:
    return classname.replace(" ", "_")


def build_toy_dataset(name: str, dest_dir: pathlib.Path, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Write ``dest_dir/images/<class>/<split>_<i>.png`` and ``dest_dir/split_zhou_<Dassl>.json``."""
    if name not in TOY_DATASETS:
        raise KeyError(f"unknown toy dataset {name!r}; known: {', '.join(TOY_DATASETS)}")
    ds = TOY_DATASETS[name]
    dest_dir = pathlib.Path(dest_dir)
    image_root = dest_dir / "images"
    for c in ds.classnames:
        (image_root / class_folder(c)).mkdir(parents=True, exist_ok=True)
    total = sum(ds.count(s) for s in SPLITS) * len(ds.classnames)
    done = 0
    split: dict[str, list] = {}
    for s in SPLITS:
        rows = []
        for label, i, scene in split_scenes(ds, s, seed):
            rel = f"{class_folder(ds.classnames[label])}/{s}_{i:04d}.png"
            Image.fromarray(render(scene)).save(image_root / rel, format="PNG")
            rows.append([rel, label, ds.classnames[label]])
            done += 1
            if progress is not None and (done % 200 == 0 or done == total):
                progress(done, total)
        split[s] = sorted(rows, key=lambda r: (r[1], r[0]))
    target = dest_dir / f"split_zhou_{ds.dassl_name}.json"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(split) + "\n", encoding="utf-8")
    os.replace(tmp, target)
