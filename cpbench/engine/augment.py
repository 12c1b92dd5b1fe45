"""Keyed augmentation: the random crop and flip of a training image at an epoch are a pure
function of (seed, epoch, the image's relative path).

Each image's transform runs under its own torch seed, ``view_seed(seed, epoch, path)``, inside
``torch.random.fork_rng``, so the draws depend neither on the batch size, the sampling order, the
number of loader workers nor on what the method drew before; the global generator (a method's
in-forward sampling) is left as it was. Statistically this is Dassl's pipeline (one fresh
RandomResizedCrop + horizontal flip per image per epoch, torchvision's own transforms); the
random stream is cpbench's, not Dassl's. Because the view is fixed by its key, the frozen image
features of that view are the same for every method that trains with the seed, which is what
the training-view store (``engine/views.py``) reuses.
"""

from __future__ import annotations

import hashlib

import torch

from cpbench.data.images import ImageList

AUGMENT_VERSION = "keyed-v1"   # part of the view store's key: change it when the keying changes


def view_seed(seed: int, epoch: int, path: str) -> int:
    """The torch seed of the augmentation of image ``path`` (relative to the image root) at
    (0-based) ``epoch`` of a run seeded ``seed``: 63 bits of SHA-256 of the three."""
    h = hashlib.sha256(f"{int(seed)}\0{int(epoch)}\0".encode() + path.encode("utf-8", "surrogateescape"))
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


class KeyedImageList(ImageList):
    """An ``ImageList`` whose random transform is keyed by (seed, epoch, path): call
    ``set_epoch`` before building each epoch's loader (workers get the dataset as it is then)."""

    def __init__(self, items, image_root, transform, seed: int, keep_decoded: int = 0):
        super().__init__(items, image_root, transform, keep_decoded=keep_decoded)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        img = self.image(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, self.epoch, self.items[index].path))
            pixels = self.transform(img)
        return pixels, torch.tensor(self.items[index].label), index
