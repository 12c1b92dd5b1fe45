"""A small generated image world: objects with composable attributes, and captions for them.

An image (``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB) shows one or two objects on a plain, slightly
shaded background. Every object has a shape, a colour, a surface pattern, a size, a position
and an orientation. Captions describe a scene in varied natural language ("a small red striped
triangle on a grey background", "a photo of a dotted star", "a circle and a heart").

Everything is a pure function of its inputs: sampling takes a ``numpy.random.Generator``;
rendering a ``Scene`` is deterministic (the scene carries the seed of its fine details: pattern
phase, colour jitter, pixel noise). No module state changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# Bumped whenever the same scene would render (or sample) differently, so that prepared toy
# datasets from an older cpbench are regenerated rather than silently mixed with new weights.
WORLD_VERSION = 2
_SUPERSAMPLE = 2  # masks are drawn at 2x and box-filtered down (anti-aliased edges)

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "diamond", "pentagon", "hexagon",
    "octagon", "crescent", "ring", "arrow", "semicircle", "trapezoid", "parallelogram", "kite",
    "teardrop", "bolt", "hourglass",
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 25), "yellow": (240, 215, 35),
    "green": (45, 165, 55), "blue": (35, 80, 215), "purple": (130, 55, 180),
    "pink": (245, 135, 190), "brown": (125, 80, 40), "white": (245, 245, 240),
    "black": (25, 25, 25), "grey": (135, 135, 135), "cyan": (45, 205, 215),
}

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "wavy", "speckled")

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (232, 232, 228), "grey": (150, 150, 150), "black": (20, 20, 24),
    "beige": (222, 205, 170), "navy": (25, 35, 85),
}

# size name -> object radius range in pixels (single-object scenes)
SIZES: dict[str, tuple[float, float]] = {"small": (10.0, 13.5), "medium": (14.0, 18.5), "large": (19.0, 25.0)}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "medium"),
    "large": ("large", "big", "large"),
}
_SMALL_PAIR_RADIUS = (11.5, 15.0)  # two-object scenes: each object fills about half its 32-pixel half


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    pattern: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float
    angle: float  # degrees


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    detail_seed: int  # seeds colour jitter, pattern phase/period, shading and pixel noise


@dataclass(frozen=True)
class Holdout:
    """Attribute combinations that pretraining never shows (the toy datasets' test classes)."""

    colour_shape: frozenset[tuple[str, str]] = frozenset()
    pattern_shape: frozenset[tuple[str, str]] = frozenset()
    shape_pairs: frozenset[frozenset[str]] = frozenset()

    def allows(self, scene: Scene) -> bool:
        for o in scene.objects:
            if (o.colour, o.shape) in self.colour_shape or (o.pattern, o.shape) in self.pattern_shape:
                return False
        if len(scene.objects) == 2 and frozenset(o.shape for o in scene.objects) in self.shape_pairs:
            return False
        return True


# ----------------------------------------------------------------------------------------------
# Shapes: polygons in unit coordinates (x right, y down, fitting in radius ~1); a shape is a list
# of (polygon, fill) drawn in order, fill 0 cutting holes (ring, crescent).


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start_deg + 360.0 * i / n)),
             radius * math.sin(math.radians(start_deg + 360.0 * i / n))) for i in range(n)]


def _shift(poly, dx: float = 0.0, dy: float = 0.0, sx: float = 1.0, sy: float = 1.0):
    return [(x * sx + dx, y * sy + dy) for x, y in poly]


def _heart() -> list[tuple[float, float]]:
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 16.5, (y + 2.5) / 15.5))
    return pts


def _teardrop() -> list[tuple[float, float]]:
    cy, r = 0.35, 0.62
    phi = math.degrees(math.acos(r / (1.0 + cy)))
    a0, a1 = -90 + phi, 270 - phi
    arc = [(r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
           for a in np.linspace(a0, a1, 40)]
    return [(0.0, -1.0)] + arc


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, -90 + 36)
    return [p for pair in zip(outer, inner) for p in pair]


_SHAPE_POLYS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_regular(48), 1)],
    "square": [([(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)], 1)],
    "triangle": [(_shift(_regular(3, 1.1), dy=0.2), 1)],
    "star": [(_shift(_star(), dy=0.08), 1)],
    "heart": [(_heart(), 1)],
    "cross": [([(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3), (0.3, 0.95),
                (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)], 1)],
    "diamond": [([(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)], 1)],
    "pentagon": [(_shift(_regular(5), dy=0.05), 1)],
    "hexagon": [(_regular(6, 1.0, 0.0), 1)],
    "octagon": [(_regular(8, 1.0, 22.5), 1)],
    "crescent": [(_regular(48), 1), (_shift(_regular(48, 0.82), dx=0.42, dy=-0.18), 0)],
    "ring": [(_regular(48), 1), (_regular(48, 0.55), 0)],
    "arrow": [([(-1.0, -0.24), (0.15, -0.24), (0.15, -0.65), (1.0, 0.0), (0.15, 0.65), (0.15, 0.24),
                (-1.0, 0.24)], 1)],
    "semicircle": [(_shift([(math.cos(math.radians(a)), math.sin(math.radians(a)))
                            for a in np.linspace(180, 360, 32)], dy=0.45), 1)],
    "trapezoid": [([(-0.5, -0.6), (0.5, -0.6), (1.0, 0.6), (-1.0, 0.6)], 1)],
    "parallelogram": [([(-0.5, -0.6), (1.0, -0.6), (0.5, 0.6), (-1.0, 0.6)], 1)],
    "kite": [([(0.0, -1.0), (0.62, -0.38), (0.0, 1.0), (-0.62, -0.38)], 1)],
    "teardrop": [(_teardrop(), 1)],
    "bolt": [([(-0.1, -1.0), (0.55, -1.0), (0.15, -0.2), (0.55, -0.2), (-0.35, 1.0), (-0.05, 0.1),
               (-0.45, 0.1)], 1)],
    "hourglass": [([(-0.75, -0.9), (0.75, -0.9), (0.08, 0.0), (0.75, 0.9), (-0.75, 0.9), (-0.08, 0.0)], 1)],
}
assert set(_SHAPE_POLYS) == set(SHAPES)


def _object_mask(o: Obj) -> np.ndarray:
    """Anti-aliased coverage of one object, float32 in [0, 1], shape (IMAGE_SIZE, IMAGE_SIZE)."""
    s = _SUPERSAMPLE
    img = Image.new("L", (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
    draw = ImageDraw.Draw(img)
    ca, sa = math.cos(math.radians(o.angle)), math.sin(math.radians(o.angle))
    for poly, fill in _SHAPE_POLYS[o.shape]:
        pts = [((o.x + o.radius * (x * ca - y * sa)) * s, (o.y + o.radius * (x * sa + y * ca)) * s) for x, y in poly]
        draw.polygon(pts, fill=255 * fill)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# Patterns: a {0,1} map over the canvas choosing the secondary colour; computed in a rotated frame.

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _pattern_map(pattern: str, o: Obj, rng: np.random.Generator) -> np.ndarray:
    if pattern == "solid":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    period = float(np.clip(o.radius * 0.42, 3.6, 7.0) * rng.uniform(0.85, 1.15))
    theta = rng.uniform(0.0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    u = (_XX - o.x) * c + (_YY - o.y) * s + rng.uniform(0, period)
    v = -(_XX - o.x) * s + (_YY - o.y) * c + rng.uniform(0, period)
    if pattern == "striped":
        m = (u / period) % 1.0 < 0.5
    elif pattern == "wavy":
        m = ((u + 0.3 * period * np.sin(2 * math.pi * v / (1.6 * period))) / period) % 1.0 < 0.5
    elif pattern == "checkered":
        q = period * 0.62
        m = (np.floor(u / q) + np.floor(v / q)) % 2 == 0
    elif pattern == "dotted":
        cell = period * 1.05
        du, dv = (u / cell) % 1.0 - 0.5, (v / cell) % 1.0 - 0.5
        m = du * du + dv * dv < 0.3 ** 2
    elif pattern == "speckled":
        coarse = rng.random((IMAGE_SIZE // 2, IMAGE_SIZE // 2)) < 0.33
        m = np.kron(coarse, np.ones((2, 2), bool))
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return m.astype(np.float32)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def render(scene: Scene) -> np.ndarray:
    """The scene's pixels: uint8 array (IMAGE_SIZE, IMAGE_SIZE, 3). Deterministic."""
    rng = np.random.default_rng(scene.detail_seed)
    bg = (np.asarray(BACKGROUNDS[scene.background]) + rng.uniform(-10, 10, 3)).astype(np.float32)
    gx, gy = rng.uniform(-14, 14, 2).astype(np.float32)
    shade = (gx * (_XX / IMAGE_SIZE - 0.5) + gy * (_YY / IMAGE_SIZE - 0.5))[..., None]
    img = bg + shade
    for o in scene.objects:
        main = np.clip(np.asarray(COLOURS[o.colour]) + rng.uniform(-16, 16, 3), 0, 255).astype(np.float32)
        luma = _luma(main)
        darker = luma > 205 or (luma > 50 and rng.random() < 0.5)
        second = main * np.float32(0.4) if darker else main + (np.float32(255.0) - main) * np.float32(0.62)
        pmap = _pattern_map(o.pattern, o, rng)[..., None]
        tex = main * (1.0 - pmap) + second * pmap
        alpha = _object_mask(o)[..., None]
        img = img + (tex - img) * alpha
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 5.0))
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Sampling


def _contrasts(colour: str, background: str) -> bool:
    return math.dist(COLOURS[colour], BACKGROUNDS[background]) > 95.0


def _pick(rng: np.random.Generator, options) -> str:
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def sample_object(rng: np.random.Generator, background: str, *, shape: str | None = None,
                  colour: str | None = None, pattern: str | None = None, size: str | None = None,
                  radius_range: tuple[float, float] | None = None,
                  box: tuple[float, float, float, float] = (0.0, 0.0, IMAGE_SIZE, IMAGE_SIZE),
                  solid_weight: float = 0.35) -> Obj:
    """One object; unspecified attributes are drawn at random. ``box`` bounds the whole object
    (x0, y0, x1, y1). The colour always contrasts with the background."""
    shape = shape or _pick(rng, SHAPES)
    if colour is None:
        colour = _pick(rng, [c for c in COLOURS if _contrasts(c, background)])
    if pattern is None:
        pattern = "solid" if rng.random() < solid_weight else _pick(rng, PATTERNS[1:])
    size = size or _pick(rng, SIZES)
    lo, hi = radius_range or SIZES[size]
    x0, y0, x1, y1 = box
    radius = float(min(rng.uniform(lo, hi), (x1 - x0) / 2 - 1, (y1 - y0) / 2 - 1))
    x = float(rng.uniform(x0 + radius + 1, x1 - radius - 1))
    y = float(rng.uniform(y0 + radius + 1, y1 - radius - 1))
    angle = float(rng.uniform(-15, 15))
    if shape == "arrow":  # arrows point any of four ways
        angle += 90.0 * int(rng.integers(4))
    return Obj(shape, colour, pattern, size, x, y, radius, angle)


def _size_of(radius: float) -> str:
    return "small" if radius < 13.75 else "medium" if radius < 18.75 else "large"


def sample_scene(rng: np.random.Generator, *, n_objects: int = 1, shape: str | None = None,
                 colour: str | None = None, pattern: str | None = None,
                 shapes: tuple[str, str] | None = None, background: str | None = None,
                 size: str | None = None, solid_weight: float = 0.35) -> Scene:
    """A random scene. With one object, ``shape``/``colour``/``pattern``/``size`` fix its
    attributes; with two (``n_objects=2`` or ``shapes`` given), ``shapes`` fixes the pair of
    shapes and ``colour``/``pattern`` apply to both objects."""
    if shapes is not None:
        n_objects = 2
    if colour is not None:
        background = background or _pick(rng, [b for b in BACKGROUNDS if _contrasts(colour, b)])
    background = background or _pick(rng, BACKGROUNDS)
    if n_objects == 1:
        obj = sample_object(rng, background, shape=shape, colour=colour, pattern=pattern, size=size,
                            solid_weight=solid_weight)
        objects: tuple[Obj, ...] = (obj,)
    else:
        if shapes is None:
            i, j = rng.choice(len(SHAPES), size=2, replace=False)
            shapes = (SHAPES[int(i)], SHAPES[int(j)])
        half = IMAGE_SIZE / 2
        if rng.random() < 0.5:  # side by side
            boxes = [(0.0, 0.0, half, IMAGE_SIZE), (half, 0.0, IMAGE_SIZE, IMAGE_SIZE)]
        else:  # one above the other
            boxes = [(0.0, 0.0, IMAGE_SIZE, half), (0.0, half, IMAGE_SIZE, IMAGE_SIZE)]
        order = rng.permutation(2)
        objects = tuple(
            sample_object(rng, background, shape=shapes[int(k)], colour=colour, pattern=pattern,
                          radius_range=_SMALL_PAIR_RADIUS, box=boxes[n], solid_weight=solid_weight)
            for n, k in enumerate(order))
        objects = tuple(replace(o, size=_size_of(o.radius)) for o in objects)
    return Scene(objects, background, int(rng.integers(2 ** 31)))


def sample_pretraining_scene(rng: np.random.Generator, holdout: Holdout, p_two: float = 0.3) -> Scene:
    """A scene from the pretraining distribution: any attributes except the held-out combinations."""
    n = 2 if rng.random() < p_two else 1
    while True:
        scene = sample_scene(rng, n_objects=n)
        if holdout.allows(scene):
            return scene


# ----------------------------------------------------------------------------------------------
# Captions

_SINGLE_TEMPLATES = (
    "a photo of {a}.", "a photo of {a}.", "{a}.", "an image of {a}.", "a picture of {a}.",
    "a drawing of {a}.", "a rendering of {a}.", "a close-up photo of {a}.", "there is {a} in the picture.",
    "a photo of the {n}.", "{a} in the image.", "a simple picture of {a}.",
)
_PAIR_TEMPLATES = (
    "{a} and {b}.", "a photo of {a} and {b}.", "a picture of {a} and {b}.", "{a} next to {b}.",
    "two shapes: {a} and {b}.", "an image with {a} and {b}.", "a photo of {a} and {nb}.",
)
_POSITIONS = {(0, 0): "in the top left corner", (1, 0): "at the top", (2, 0): "in the top right corner",
              (0, 1): "on the left", (1, 1): "in the center", (2, 1): "on the right",
              (0, 2): "in the bottom left corner", (1, 2): "at the bottom", (2, 2): "in the bottom right corner"}


def _article(phrase: str, rng: np.random.Generator) -> str:
    # natural "an" before a vowel most of the time; plain "a" sometimes, as in web captions
    if phrase[0] in "aeiou" and rng.random() < 0.8:
        return "an " + phrase
    return "a " + phrase


def describe(o: Obj, rng: np.random.Generator, p_colour: float = 0.8, p_pattern: float = 0.6,
             p_size: float = 0.5) -> str:
    """A noun phrase for one object, without article: "small red striped triangle"."""
    adjectives = []
    if rng.random() < p_size:
        adjectives.append(_pick(rng, SIZE_WORDS[o.size]))
    if rng.random() < p_colour:
        adjectives.append(o.colour)
    if o.pattern != "solid" and rng.random() < p_pattern:
        adjectives.append(o.pattern)
    elif o.pattern == "solid" and rng.random() < 0.15:
        adjectives.append(_pick(rng, ("solid", "plain")))
    if len(adjectives) > 1 and rng.random() < 0.25:
        adjectives = [adjectives[int(i)] for i in rng.permutation(len(adjectives))]
    return " ".join(adjectives + [o.shape])


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of many natural captions of the scene."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        noun = describe(o, rng)
        text = _pick(rng, _SINGLE_TEMPLATES).format(a=_article(noun, rng), n=noun)
        extras = []
        if rng.random() < 0.2:
            col = min(int(o.x * 3 / IMAGE_SIZE), 2)
            row = min(int(o.y * 3 / IMAGE_SIZE), 2)
            extras.append(_POSITIONS[(col, row)])
    else:
        a, b = (describe(o, rng, 0.5, 0.3, 0.1) for o in scene.objects)
        if rng.random() < 0.5:
            a, b = b, a
        text = _pick(rng, _PAIR_TEMPLATES).format(a=_article(a, rng), b=_article(b, rng), nb=b)
        extras = []
    if rng.random() < 0.35:
        extras.append(f"on {_article(scene.background, rng)} background")
    if extras:
        text = text.rstrip(".") + " " + " ".join(extras) + "."
    return text
