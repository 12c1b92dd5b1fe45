"""Image lists as torch datasets, with CLIP's train/test transforms (Dassl/CoOp settings).

The loaders use the ``*_pixels`` halves of the transforms (decode, resize, crop, flip, then uint8
pixels) and ``to_model_input`` finishes a whole batch on the device: ToTensor's ``/255`` and
Normalize, the same float operations per element, so the result is bit-identical to the full
per-image transform while decode workers do less, and a quarter of the bytes cross to the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from cpbench.data.splits import Item
from cpbench.errors import UserError
from cpbench.models.backbone import Preprocess

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def _resize_center(pre: Preprocess) -> list:
    """open_clip's test-time geometry for the backbone's ``resize_mode`` (``image_transform``):
    shortest = resize the short side, center crop; squash = resize to a square (SigLIP's);
    longest = fit the long side, center crop-or-pad with ``fill_color``."""
    interpolation = _INTERP.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    mode = getattr(pre, "resize_mode", "shortest")
    if mode == "squash":
        return [T.Resize((pre.image_size, pre.image_size), interpolation=interpolation)]
    if mode == "longest":
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

        return [ResizeKeepRatio(pre.image_size, interpolation=interpolation, longest=1),
                CenterCropOrPad(pre.image_size, fill=pre.fill_color)]
    return [T.Resize(pre.image_size, interpolation=interpolation), T.CenterCrop(pre.image_size)]


class Pixels:
    """RGB PIL image -> uint8 tensor [3, H, W]: ToTensor without its conversion to float."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return "Pixels()"


def _train_geometry(pre: Preprocess) -> list:
    if pre.train_crop_scale is None:
        crop = _resize_center(pre)
    else:
        crop = [T.RandomResizedCrop(pre.image_size, scale=pre.train_crop_scale,
                                    interpolation=_INTERP.get(pre.interpolation, T.InterpolationMode.BICUBIC))]
    return crop + [T.RandomHorizontalFlip()]


def test_transform(pre: Preprocess) -> T.Compose:
    """open_clip's test transform for the backbone: its resize mode and interpolation (bicubic:
    resize the short side, center crop), normalise with its mean and std."""
    return T.Compose(_resize_center(pre) + [T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def train_transform(pre: Preprocess) -> T.Compose:
    """RandomResizedCrop(scale 0.08-1, bicubic) + horizontal flip + normalise (Dassl's
    random_resized_crop, random_flip, normalize). A backbone may declare its own crop scale, or
    none (``train_crop_scale=None``: the test resize and center crop, then the flip)."""
    return T.Compose(_train_geometry(pre) + [T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def test_pixels(pre: Preprocess) -> T.Compose:
    """``test_transform`` up to uint8 pixels (finish with ``to_model_input``)."""
    return T.Compose(_resize_center(pre) + [Pixels()])


def train_pixels(pre: Preprocess) -> T.Compose:
    """``train_transform`` up to uint8 pixels (the same random draws; finish with ``to_model_input``)."""
    return T.Compose(_train_geometry(pre) + [Pixels()])


def to_model_input(pixels: torch.Tensor, pre: Preprocess, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised images on ``device``: ToTensor's ``float / 255`` then
    Normalize's ``sub_(mean).div_(std)``, batched (bit-identical per element), then ``dtype``."""
    x = pixels.to(device, non_blocking=True).to(torch.float32).div(255)
    mean = torch.as_tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(pre.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


def describe(transform: T.Compose) -> str:
    return repr(transform).replace("\n", " ")


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} is missing; {_check_advice(path)}") from None
    except OSError as exc:
        raise UserError(f"image {path} is unreadable ({exc}); {_check_advice(path)}") from None


def _check_advice(path: Path) -> str:
    """The ``--check`` of the prepared dataset holding ``path`` (the folder with its prepare record)."""
    import json
    import shlex

    from cpbench.data.folders import MARKER

    for folder in Path(path).absolute().parents:
        if (folder / MARKER).is_file():
            try:
                name = json.loads((folder / MARKER).read_text(encoding="utf-8"))["dataset"]
            except (OSError, ValueError, KeyError, TypeError):
                name = folder.name
            cmd = shlex.join(["cpbench", "prepare", str(name), "--check", "--root", str(folder.parent)])
            return f"run `{cmd}` to find every bad image and how to repair them"
    return "check the dataset's images"


class ImageList(Dataset):
    """Items as (transformed image, label, index).

    ``keep_decoded`` (bytes): keep decoded images in memory up to this budget, so a few-shot
    training set is decoded once rather than once per epoch (per process: with DataLoader
    workers each worker keeps its own copy for the life of the loader)."""

    def __init__(self, items: Sequence[Item], image_root: Path, transform, keep_decoded: int = 0):
        self.items = list(items)
        self.image_root = Path(image_root)
        self.transform = transform
        self.keep_decoded = keep_decoded
        self._decoded: dict[int, Image.Image] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> Image.Image:
        img = self._decoded.get(index)
        if img is None:
            img = load_image(self.image_root / self.items[index].path)
            size = img.width * img.height * 3
            if self._decoded_bytes + size <= self.keep_decoded:
                self._decoded[index] = img
                self._decoded_bytes += size
        return img

    def __getitem__(self, index: int):
        return self.transform(self.image(index)), torch.tensor(self.items[index].label), index
