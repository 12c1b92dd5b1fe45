"""Seeded, vectorised bootstrap over seeds and test images, and the paired tests built on it.

The resampling scheme (the same for intervals and paired differences):

- **Test images.** Every replicate draws n of the n images of a test set (one dataset's base,
  new or full test split) with replacement. The draw is shared by every seed and every method
  evaluated on that test set: all of them saw the same images, so the test set's sampling error
  is common to them (it does not average out over seeds) and differences are paired image by
  image. Images are pooled by their correctness pattern across the evaluations sharing the test
  set, so one replicate is one multinomial draw over at most min(n, 2^k) patterns (exact, fast).
- **Seeds.** Every replicate then draws S of a cell's S seeds with replacement and averages
  their accuracies. The draw is keyed by (protocol, training dataset, shots, the seed list), so
  Base and New of one training use the same seeds, and two methods with the same seeds are paired
  seed by seed. A cell with one seed gets an interval over test images only.
- HM and Average cells are recomputed from their parts in every replicate (never by formula on
  the means' intervals).

Intervals are percentile intervals (2.5 and 97.5 percentiles of ``REPLICATES`` replicates). The
generator of every draw is seeded by ``SEED`` and the draw's key, so the same rows and options
give the same intervals. A paired difference A − B is *significant* when its 95 % interval
excludes 0; its two-sided p is twice the smaller share of replicates on either side of 0.
McNemar's test (exact binomial on the images exactly one of the two gets right) is given per
seed for cells of one test set.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
SEED = 0
LEVEL = 0.95
BLOCK_CELLS = 4_000_000   # replicates x patterns drawn at once (memory bound)


def rng(*key) -> np.random.Generator:
    """A generator seeded by ``SEED`` and a stable hash of ``key`` (not Python's salted hash)."""
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode())])


def image_replicates(correct: np.ndarray, key, replicates: int = REPLICATES) -> np.ndarray:
    """``correct``: (k, n) booleans, k evaluations of the same n images. Returns (replicates, k)
    accuracies (percent), each replicate one shared draw of n images with replacement."""
    k, n = correct.shape
    if n == 0:
        return np.full((replicates, k), np.nan)
    # images with the same correctness pattern are interchangeable: resample pattern counts
    patterns, counts = np.unique(np.packbits(correct.T, axis=1), axis=0, return_counts=True)
    values = np.unpackbits(patterns, axis=1, count=k).astype(np.float64)       # (P, k)
    g = rng("images", key)
    out = np.empty((replicates, k))
    block = max(1, BLOCK_CELLS // len(counts))
    for start in range(0, replicates, block):
        stop = min(replicates, start + block)
        draws = g.multinomial(n, counts / n, size=stop - start)                  # (b, P)
        out[start:stop] = draws @ values * (100.0 / n)
    return out


def seed_draws(n_seeds: int, key, replicates: int = REPLICATES) -> np.ndarray:
    """(replicates, n_seeds) seed positions drawn with replacement (all zeros for one seed)."""
    if n_seeds <= 1:
        return np.zeros((replicates, max(1, n_seeds)), dtype=np.int64)
    return rng("seeds", key).integers(0, n_seeds, size=(replicates, n_seeds))


def seed_mean(per_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(replicates, S) per-seed accuracies and seed draws -> (replicates,) means of the drawn seeds."""
    return np.take_along_axis(per_seed, draws, axis=1).mean(axis=1)


def hm(b: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b + n == 0, 0.0, 2 * b * n / (b + n))


def interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    if reps is None or not np.all(np.isfinite(reps)):
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class Paired:
    """A paired difference A − B: point estimate, interval, two-sided bootstrap p, significance."""
    delta: float
    low: float
    high: float
    p: float
    significant: bool


def paired(delta: float, reps: np.ndarray, level: float = LEVEL) -> Paired | None:
    ci = interval(reps, level)
    if ci is None or not np.isfinite(delta):
        return None
    p = float(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
    return Paired(delta, ci[0], ci[1], p, bool(ci[0] > 0 or ci[1] < 0))


@dataclass
class McNemar:
    seed: int
    a_only: int    # images A gets right and B wrong
    b_only: int
    p: float       # exact two-sided binomial p (1.0 without discordant images)


def mcnemar(seed: int, a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """McNemar's exact test on one seed's paired outcomes: the discordant images are
    Binomial(a_only + b_only, 1/2) under 'no difference'."""
    from scipy.stats import binomtest

    a_only = int(np.sum(a_correct & ~b_correct))
    b_only = int(np.sum(~a_correct & b_correct))
    total = a_only + b_only
    p = 1.0 if total == 0 else float(binomtest(a_only, total, 0.5).pvalue)
    return McNemar(seed, a_only, b_only, p)
