"""CPL — Counterfactual Prompt Learning (He et al., EMNLP'22; methods.md §3.5).

Base model: CoCoOp (``cpbench.methods.cocoop``: ctx from "a photo of a" + meta-net π =
Linear(E→E/16)–ReLU–Linear(E/16→D) on the normalised image feature, π(x) added to every context
token, one prompt set per image); CPL subclasses it.
CPL adds a learnable mask ``u`` [E, C] (official name and layout, init ones) and a
counterfactual branch used only in training:

1. Negative class (``neg_class``): the most similar OTHER class name. The paper uses BERTScore
   F1, which cannot run offline here; the stand-in is the cosine of the frozen CLIP text
   features of the plain class names (no template), computed in ``set_classnames``.
2. Negative image: one few-shot training image of the negative class (the first one in split
   order; the official ``cname2img`` takes an arbitrary one from a set), preprocessed as the
   official ``ntransform``: Resize((S, S)) + ToTensor + Normalize (no crop, no flip), encoded
   once by the frozen image encoder. The engine hands the training items to
   ``prepare_training(train_items, image_root, device)`` before training (tests may call
   ``set_negative_features`` instead).
3. Target mask u* (paper Eq. 2, official ``utils/solver.py``), per sample, greedy on the raw
   (unnormalised) image features v and v⁻: repeatedly swap in the single dimension of v⁻ that
   maximises the negative class's logit (plain class-name text features), until the negative
   logit exceeds the positive one (at least one swap, as the code). u*[chosen] = 1, else −1.
   The official flow downloads precomputed u*; it is computed here on the fly (exact, O(E) per
   step from the running dot product and norm).
4. u_b = clamp(0.999·u*_b + 0.001·u[:, y_b], 0, 1); v' = normalise((1 − u_b)⊙v̂ + u_b⊙v̂⁻) —
   the paper's element-wise form (the code's batch-1 broadcasting makes it an outer product;
   not reproduced).

Loss terms (per image, averaged over the batch; at the official batch 1 this is the code's sum):
``ce`` CE(z, y); ``cl`` λ·mean_c −log softmax([cos(t_c, v̂), cos(t_c, v')])[0] over the image's
C class prompt features t_c (temperature 1, λ = 1, official ``xloss_compute``); ``mask``
c·‖u_b‖₂ with c = 0.07. Inference = CoCoOp.

Continual learning: the mask columns ``u`` are ``class_rows`` (fresh columns of ones for each
task's classes). Retrieval (CPL's image-text retrieval experiment): every caption is a class, its
negative the most similar other caption and that caption's image (cpbench/protocols/retrieval.py).

Deviation (option ``search_text_normalized``, default true): the stopping test of the search
compares logits with L2-normalised class-name text features, i.e. it stops when CLIP's
prediction between the two names flips; the official code uses unnormalised text features
(set false for that). The choice of dimension is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import clean
from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions


@dataclass
class CPLOptions(CoCoOpOptions):
    cl_weight: float = 1.0        # λ (official ``lam``)
    mask_weight: float = 0.07     # c (official ``control_scale``)
    mask_momentum: float = 0.999  # u = clamp(m·u* + (1−m)·u_learned, 0, 1) (official ``mupdate``)
    search_text_normalized: bool = True


def greedy_mask(v: torch.Tensor, v_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """Greedy minimal swap set (paper Eq. 2) for a batch: v, v_neg [B, E] raw image features;
    t_pos, t_neg [B, E] text features of the positive / negative class name. Returns a bool mask
    [B, E] of the swapped dimensions: swap, one at a time, the dimension of v_neg that maximises
    the negative logit of the current (renormalised) feature, until neg > pos (>= 1 swap)."""
    v = v.float().clone()
    v_neg = v_neg.float()
    t_pos, t_neg = t_pos.float(), t_neg.float()
    b, e = v.shape
    chosen = torch.zeros(b, e, dtype=torch.bool, device=v.device)
    active = torch.ones(b, dtype=torch.bool, device=v.device)
    rows = torch.arange(b, device=v.device)
    for _ in range(e):
        dot_n = (v * t_neg).sum(-1, keepdim=True)
        norm2 = (v * v).sum(-1, keepdim=True)
        cand = (dot_n + (v_neg - v) * t_neg) / (norm2 - v * v + v_neg * v_neg).clamp_min(1e-30).sqrt()
        cand = cand.masked_fill(chosen, float("-inf"))
        pick = cand.argmax(dim=-1)
        pick_rows = rows[active]
        chosen[pick_rows, pick[active]] = True
        v[pick_rows, pick[active]] = v_neg[pick_rows, pick[active]]
        f = F.normalize(v, dim=-1)
        flipped = (f * t_neg).sum(-1) > (f * t_pos).sum(-1)
        active = active & ~flipped
        if not bool(active.any()):
            break
    return chosen


def contrastive_cf_loss(text: torch.Tensor, v: torch.Tensor, v_cf: torch.Tensor) -> torch.Tensor:
    """mean_c −log( e^{cos(t_c, v)} / (e^{cos(t_c, v)} + e^{cos(t_c, v')}) ), text [C, D]."""
    pos = F.cosine_similarity(text, v.unsqueeze(0), dim=-1)
    neg = F.cosine_similarity(text, v_cf.unsqueeze(0), dim=-1)
    return -torch.log_softmax(torch.stack([pos, neg], dim=1), dim=1)[:, 0].mean()


class CPL(CoCoOp):
    name = "cpl"
    Options = CPLOptions
    class_rows = {"u": 1}  # one mask column per class: new classes get fresh columns (continual)

    def __init__(self, backbone, classnames, options: CPLOptions, template="a photo of a {}."):
        if len(classnames) < 2:
            raise UserError("CPL needs at least 2 training classes (a negative class per class)")
        super().__init__(backbone, classnames, options, template)
        self.u = nn.Parameter(torch.ones(backbone.embed_dim, len(classnames), dtype=backbone.dtype))
        self._build_names()
        self.register_buffer("neg_raw", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------------ classes
    def _build_names(self) -> None:
        with torch.no_grad():
            t = self.backbone.encode_text([clean(c) for c in self.classnames]).float()
        tn = F.normalize(t, dim=-1)
        sim = tn @ tn.t()
        sim.fill_diagonal_(float("-inf"))
        self.register_buffer("name_text", t, persistent=False)          # raw plain-name features
        self.register_buffer("neg_class", sim.argmax(dim=-1), persistent=False)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        if len(classnames) > 1:
            self._build_names()

    # ------------------------------------------------------------------ negatives
    def set_negative_features(self, raw: torch.Tensor) -> None:
        """raw [C, E]: frozen raw image feature of a negative-class image for each class c
        (row c belongs to the image of ``neg_class[c]``)."""
        if raw.shape[0] != self.prompts.n_cls:
            raise ValueError(f"need one negative feature per class ({self.prompts.n_cls}), got {raw.shape[0]}")
        self.neg_raw = raw.detach().float().to(self.ctx.device)

    def prepare_training(self, train_items: Sequence, image_root: Path, device: torch.device | None = None) -> None:
        """Pick and encode the negative image of every class from the few-shot train set."""
        from cpbench.data.images import ImageList

        first: dict[int, Any] = {}
        for it in train_items:
            first.setdefault(int(it.label), it)
        pre = self.backbone.preprocess
        size = pre.image_size if isinstance(pre.image_size, (tuple, list)) else (pre.image_size, pre.image_size)
        ntransform = T.Compose([T.Resize(tuple(size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                                T.Normalize(pre.mean, pre.std)])
        negs = [int(n) for n in self.neg_class.tolist()]
        missing = sorted({n for n in negs if n not in first})
        if missing:
            raise UserError(f"CPL: no training image for class(es) {missing[:5]}; use a split with every class")
        images = ImageList([first[n] for n in negs], image_root, ntransform)
        batch = torch.stack([images[i][0] for i in range(len(negs))]).to(device or self.ctx.device, self.ctx.dtype)
        with torch.no_grad():
            raw = torch.cat([self.backbone.encode_image(batch[i: i + 64]).float() for i in range(0, len(batch), 64)])
        self.set_negative_features(raw)

    # ------------------------------------------------------------------ training
    def target_mask(self, raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """u* in {−1, 1}: [B, E]."""
        neg = self.neg_class[labels]
        t_pos, t_neg = self.name_text[labels], self.name_text[neg]
        if self.options.search_text_normalized:
            t_pos, t_neg = F.normalize(t_pos, dim=-1), F.normalize(t_neg, dim=-1)
        chosen = greedy_mask(raw, self.neg_raw[labels], t_pos, t_neg)
        return chosen.float() * 2 - 1

    def forward_train(self, images, labels):
        if self.neg_raw.numel() == 0:
            raise RuntimeError("CPL.forward_train needs negative images: call prepare_training() or set_negative_features()")
        o = self.options
        raw = self.backbone.encode_image(images).float()
        f = F.normalize(raw, dim=-1)
        with torch.no_grad():
            ustar = self.target_mask(raw, labels)
        u = torch.clamp(o.mask_momentum * ustar + (1 - o.mask_momentum) * self.u.float().t()[labels], 0, 1)  # [B, E]
        f_neg = F.normalize(self.neg_raw[labels], dim=-1)
        v_cf = F.normalize((1 - u) * f + u * f_neg, dim=-1)
        text = self.instance_text_features(f)                                     # [B, C, D]
        logits = self.backbone.logit_scale.float() * torch.einsum("bd,bcd->bc", f, text)
        cl = torch.stack([contrastive_cf_loss(text[b], f[b], v_cf[b]) for b in range(f.shape[0])]).mean()
        terms = {"ce": F.cross_entropy(logits, labels), "cl": o.cl_weight * cl,
                 "mask": o.mask_weight * u.norm(dim=-1).mean()}
        return logits, terms
