"""CLIP-Adapter (Gao et al., IJCV'24 / arXiv 2110.04544; official gaopengcuhk/CLIP-Adapter 08d07f8,
``clip_adapter.py``, class ``CLIP_Adapter``: a trainer for the CoOp code base).

A bottleneck MLP on the image feature, ``adapter.fc`` = Linear(E, E/4, no bias) → ReLU →
Linear(E/4, E, no bias) → ReLU (note the final ReLU), blended residually with the frozen feature:
f' = 0.2·adapter(f) + 0.8·f (the ratio is hard-coded), then logits = logit_scale ·
normalise(f') · tᵀ with t the normalised frozen text features of the dataset's hand-crafted
prompt (``CUSTOM_TEMPLATES``, equal to cpbench's dataset templates; recomputed on every forward
officially, here once per class set: they are frozen). One CE. The whole CLIP is floated
(``clip_model.float()``): the official run is fp32 (``clip_adapter.yaml``).

Schedule: the repository ships no config; its README says to put the file into CoOp's
``trainers/`` and "follow CoOp's command", so the configs are CoOp's (``clip_adapter.yaml``):
SGD lr 0.002, batch 32, 1 warm-up epoch at 1e-5, cosine; few-shot epochs per shots as CoOp's
scripts (1 → 50, 2/4 → 100, 8/16 → 200; ImageNet 50), base-to-new as CoOp's (200), transfer from
ImageNet 50. The adapter's initial weights are nn.Linear's default (kaiming-uniform), as official.

Feature cache: the adapter maps a feature f to a positively homogeneous function of f (bias-free
linear layers and ReLUs), so normalise(0.2·adapter(c·f) + 0.8·c·f) = normalise(0.2·adapter(f) +
0.8·f) for every c > 0: applying it to the L2-normalised frozen features of the exact test-feature
cache gives the official logits (the official code feeds the unnormalised ones; the two agree to
float round-off, checked by the golden test). Training encodes fresh augmented images each epoch
through the frozen encoder, as the official loop.

Checked against the official code: ``tests/golden/clip_adapter_L2.json`` (logits, CE, both
weights' gradients).

Deviations:
- The official ``CustomCLIP`` builds ``Adapter(1024, 4)``: 1024 is RN50's embedding width, so it
  runs only on RN50 (a ViT-B/16's 512-d features do not fit). cpbench sizes it from the backbone's
  embedding width (E, E/``reduction``); the golden case was produced with the same patch.
- The text features are computed once per class set rather than on every forward (identical:
  the text encoder is frozen).

Protocols: few-shot (the paper), and base-to-new, cross-dataset and DG, which the CoOp code base
hosting the trainer runs with any trainer (the adapter is on the image side, so any class names
can be scored); continual (one class-agnostic adapter carries over). Not retrieval: its prompt is a
template around a class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options
from cpbench.methods.prompts import template_features


@dataclass
class CLIPAdapterOptions(Options):
    reduction: int = 4      # Adapter(c_in, reduction=4): hidden width E / 4
    ratio: float = 0.2      # the residual ratio, hard-coded in CustomCLIP.forward
    template: str = ""      # the hand-crafted prompt; empty = the dataset's template


class Adapter(nn.Module):
    """``fc`` = Linear(E, E/r, no bias) → ReLU → Linear(E/r, E, no bias) → ReLU (official names)."""

    def __init__(self, width: int, reduction: int):
        super().__init__()
        if reduction < 1 or width // reduction < 1:
            raise UserError(f"reduction must be between 1 and the embedding width ({width}), got {reduction}")
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False), nn.ReLU(),
                                nn.Linear(width // reduction, width, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def blend(adapter: nn.Module, features: torch.Tensor, ratio: float) -> torch.Tensor:
    """normalise(ratio·adapter(f) + (1 − ratio)·f)."""
    f = features.to(adapter.fc[0].weight.dtype)
    return F.normalize((ratio * adapter(f) + (1 - ratio) * f).float(), dim=-1)


class CLIPAdapter(Method):
    name = "clip_adapter"
    Options = CLIPAdapterOptions
    feature_training = True   # opt-in cached augmented views (feature_views > 0)
    view_store = True

    def __init__(self, backbone, classnames, options: CLIPAdapterOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        self.adapter = Adapter(backbone.embed_dim, options.reduction).to(backbone.dtype)
        self.register_buffer("text", torch.zeros(0), persistent=False)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.text = torch.zeros(0, device=self.text.device)

    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """Frozen features of the hand-crafted prompt of every class (unnormalised), cached."""
        if self.text.numel() == 0:
            self.text = template_features(self.backbone, self.options.template or self.template, self.classnames)
        return self.text

    def logits_from_features(self, image_features: torch.Tensor, context: Any) -> torch.Tensor:
        return self.backbone.logit_scale.float() * blend(self.adapter, image_features, self.options.ratio) @ context.t()

    def forward_train(self, images, labels):
        with torch.no_grad():
            features = self.encode_images(images)
        return self.forward_train_features(features, labels)
