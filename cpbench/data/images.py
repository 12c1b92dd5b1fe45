"""Image lists as torch datasets, with CLIP's train/test transforms (Dassl/CoOp settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from cpbench.data.splits import Item
from cpbench.errors import UserError
from cpbench.models.backbone import Preprocess

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def test_transform(pre: Preprocess) -> T.Compose:
    """Resize the short side (bicubic), center crop, normalise."""
    return T.Compose([
        T.Resize(pre.image_size, interpolation=_INTERP.get(pre.interpolation, T.InterpolationMode.BICUBIC)),
        T.CenterCrop(pre.image_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(pre: Preprocess) -> T.Compose:
    """RandomResizedCrop(scale 0.08-1, bicubic) + horizontal flip + normalise."""
    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.08, 1.0),
                            interpolation=_INTERP.get(pre.interpolation, T.InterpolationMode.BICUBIC)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def describe(transform: T.Compose) -> str:
    return repr(transform).replace("\n", " ")


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} is missing; run `cpbench prepare <dataset> --check`") from None
    except OSError as exc:
        raise UserError(f"image {path} is unreadable ({exc}); run `cpbench prepare <dataset> --check`") from None


class ImageList(Dataset):
    def __init__(self, items: Sequence[Item], image_root: Path, transform):
        self.items = list(items)
        self.image_root = Path(image_root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        img = load_image(self.image_root / item.path)
        return self.transform(img), torch.tensor(item.label), index
