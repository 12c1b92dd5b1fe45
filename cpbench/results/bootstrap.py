"""The test-image part of every interval and paired test: a seeded, vectorised bootstrap over the
test images, with the seeds held fixed (the seed part and how the two combine:
``significance.py``).

Every replicate draws n of the n images of a test set (one dataset's base, new or full test split)
with replacement. The draw is shared by every seed and every method evaluated on that test set:
all of them saw the same images, so the test set's sampling error is common to them (it does not
average out over seeds) and differences are paired image by image. Images are pooled by their
correctness pattern across the evaluations sharing the test set, so one replicate is one
multinomial draw over at most min(n, 2^k) patterns (exact, fast). A cell's replicate is the mean
over its seeds of their replicate accuracies; HM and Average cells are recomputed from their
parts in every replicate (never by formula on the means' intervals).

The generator of every draw is seeded by ``SEED`` and the draw's key, so the same rows and options
give the same intervals.
"""

from __future__ import annotations

import zlib

import numpy as np

REPLICATES = 2000
SEED = 0
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


def hm(b: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b + n == 0, 0.0, 2 * b * n / (b + n))
