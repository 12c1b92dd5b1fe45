"""Tip-Adapter — training-free cache model (Zhang et al., ECCV'22; official gaopengcuhk/Tip-Adapter
d0e2d6f: ``main.py`` / ``main_imagenet.py`` ``run_tip_adapter`` and ``utils.py``
``clip_classifier``, ``build_cache_model``, ``pre_load_features``, ``search_hp``).

The cache: keys K = normalise(mean over ``augment_epoch`` = 10 augmented passes of the frozen,
UNNORMALISED image features of the few-shot training images) — one key per training image —, values
V = one-hot labels. The augmentation is RandomResizedCrop(scale (0.5, 1), bicubic) + flip
(``crop_scale_min=0.5`` in ``tip_adapter.yaml``), each pass drawn afresh. Logits of a normalised
test feature f:

  tip = 100·f·Wᵀ + α·exp(−β(1 − f·Kᵀ))·V

with W the classifier of normalised text features (``clip_classifier``: per class the normalised
mean of the normalised features of the dataset's templates: its one template, or for ImageNet the
7 templates of Tip-Adapter's ``datasets/imagenet.py``, ``templates: imagenet7``) and the 100
hard-coded (not ``logit_scale.exp()``). β and α: ``search_hp`` on the validation features
(test transform, from the exact frozen-feature cache) over β ∈ {0.1 + i·(s_β − 0.1)/n_β} and α ∈
{0.1 + j·(s_α − 0.1)/n_α} (``search_scale`` [s_β, s_α], ``search_step`` [n_β, n_α] = [200, 20]),
β outer, α inner, the first strictly better top-1 accuracy from 0 kept; (0, 0) if none beats 0, as
official. Per-dataset ``init_alpha`` / ``search_scale`` from ``configs/<dataset>.yaml``.

Checked against the official code: ``tests/golden/tip_adapter_L2.json`` (text classifier, cache
keys and values, affinity, cache and CLIP logits, the tip logits at the initial β/α, and the
search's result).

Deviations:
- The search runs on the split's validation images, which cpbench's few-shot split holds as
  min(K, 4) per class (CoOp's, as the linear probe and CLIP-LoRA use): the official ``main.py``
  searches on the dataset's full validation split. ImageNet (no validation split; in cpbench its
  ``val`` is empty) keeps the initial β/α: the official ``main_imagenet.py`` searches on the test
  set and discards the result, reporting the initial-β/α test accuracy, which is what runs here.
  Without validation images the initial values are kept too (``searched`` = 0 in the state).
- The official cache keys, values and features are fp16 (the CLIP of ``clip.load`` on a GPU);
  here the features are averaged and the logits computed in float32 (values equal to round-off).
- ``F.one_hot(labels)`` has as many columns as the largest training label + 1; here always one
  per class (a class without training images would otherwise crash the official matmul).

Protocols: few-shot and DG (ImageNet → V2 / Sketch / A / R: the same classes, which the paper
evaluates). A cache has keys for its training classes only, so base-to-new and cross-dataset are
refused (evaluate the training classes with few_shot); no continual or retrieval. The learned
state (cache, β, α) exports and loads like prompts; its rows number the training images
(``data_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options, TrainingData, clean

# Tip-Adapter datasets/imagenet.py imagenet_templates (d0e2d6f), in its order
IMAGENET7 = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
             "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
TEMPLATE_SETS = {"imagenet7": IMAGENET7}
CLIP_SCALE = 100.0   # Tip-Adapter's hard-coded ``100. * features @ clip_weights``


@dataclass
class TipAdapterOptions(Options):
    init_alpha: float = 1.17
    init_beta: float = 1.0
    search: bool = True            # search_hp on the validation features
    search_scale_beta: float = 7.0
    search_scale_alpha: float = 3.0
    search_step_beta: int = 200
    search_step_alpha: int = 20
    augment_epoch: int = 10        # augmented passes averaged into each cache key
    templates: str = ""            # "" = the dataset's template; imagenet7 = Tip-Adapter's 7 ImageNet templates


def grid(scale: float, steps: int) -> list[float]:
    """``search_hp``'s list: [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(−(β − β·affinity)) @ values."""
    return ((-1) * (beta - beta * affinity)).exp() @ values


def search_hp(affinity: torch.Tensor, clip_logits: torch.Tensor, values: torch.Tensor, labels: torch.Tensor,
              o: TipAdapterOptions) -> tuple[float, float, float]:
    """(β, α, accuracy %) of ``search_hp``: β outer, α inner, the first strictly better accuracy
    from 0 wins; (0, 0, 0) when none beats 0."""
    best, best_beta, best_alpha = 0, 0.0, 0.0
    labels = labels.to(clip_logits.device)
    for beta in grid(o.search_scale_beta, o.search_step_beta):
        cache = cache_logits(affinity, values, beta)
        for alpha in grid(o.search_scale_alpha, o.search_step_alpha):
            right = int(((clip_logits + cache * alpha).argmax(dim=1) == labels).sum())
            if right > best:
                best, best_beta, best_alpha = right, beta, alpha
    return best_beta, best_alpha, 100.0 * best / max(1, len(labels))


class TipAdapter(Method):
    name = "tip_adapter"
    Options = TipAdapterOptions
    trainable = False
    closed_form = True
    new_classes = False
    continual = False
    data_rows = ("cache_keys", "cache_values")

    @classmethod
    def unsupported(cls, protocol, options):
        if protocol in ("base2new", "cross_dataset"):
            return (f"{cls.name} cannot score classes it has no cache keys for, so --protocol {protocol} (new "
                    "classes) is not defined for it; use --protocol few_shot (its training classes) or dg "
                    "(ImageNet -> V2/Sketch/A/R, the same classes)")
        return super().unsupported(protocol, options)

    def __init__(self, backbone, classnames, options: TipAdapterOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        if options.templates and options.templates not in TEMPLATE_SETS:
            raise UserError(f"templates must be empty (the dataset's) or one of {', '.join(TEMPLATE_SETS)}, "
                            f"got {options.templates!r}")
        self.fitted_classnames = list(classnames)
        e, c = backbone.embed_dim, len(classnames)
        self.register_buffer("cache_keys", torch.zeros(0, e))     # [N, E] normalised (official: its transpose)
        self.register_buffer("cache_values", torch.zeros(0, c))   # [N, C] one-hot
        self.register_buffer("alpha", torch.tensor(float(options.init_alpha)))
        self.register_buffer("beta", torch.tensor(float(options.init_beta)))
        self.register_buffer("searched", torch.zeros(()))         # 1: β/α searched on validation images
        self.register_buffer("clip_weights", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------------ classes and state
    def set_classnames(self, classnames):
        if list(classnames) != self.fitted_classnames:
            raise UserError(f"{self.name} only scores the classes its cache was built from (no new classes); "
                            "evaluate it on its training classes (--protocol few_shot or dg)")
        super().set_classnames(classnames)

    def load_learned_state(self, state):
        """The cache's rows number the training images: take their count from ``state``."""
        for k in self.data_rows:
            if k in state:
                self.resize_rows(k, state[k].shape[0])
        super().load_learned_state(state)

    def resize_rows(self, key: str, rows: int) -> None:
        """Replace the buffer or parameter ``key`` by zeros with ``rows`` rows (other axes kept),
        unless it has them already (a resumed training's optimiser holds that very parameter)."""
        owner_name, _, attr = key.rpartition(".")
        owner = self.get_submodule(owner_name) if owner_name else self
        own = getattr(owner, attr)
        if own.shape[0] == rows:
            return
        new = own.detach().new_zeros((rows,) + tuple(own.shape[1:]))
        setattr(owner, attr, torch.nn.Parameter(new, requires_grad=own.requires_grad)
                if isinstance(own, torch.nn.Parameter) else new)

    def n_learnable(self) -> int:
        return 0   # training-free: nothing is learned by gradient (β, α are searched, the cache is memorised)

    # ------------------------------------------------------------------ the cache
    @torch.no_grad()
    def classifier(self) -> torch.Tensor:
        """``clip_weights`` as rows [C, E]: per class the normalised mean of the normalised text
        features of the templates (one template: its normalised features)."""
        if self.clip_weights.numel() == 0:
            templates = TEMPLATE_SETS.get(self.options.templates) or (self.template,)
            rows = []
            for name in self.classnames:
                f = F.normalize(self.backbone.encode_text([t.format(clean(name)) for t in templates]).float(), dim=-1)
                rows.append(F.normalize(f.mean(dim=0), dim=-1))
            self.clip_weights = torch.stack(rows)
        return self.clip_weights

    @torch.no_grad()
    def build_cache(self, data: TrainingData) -> None:
        """``build_cache_model``: keys from ``augment_epoch`` augmented passes, values one-hot."""
        from cpbench.data.images import ImageList, train_pixels
        from cpbench.engine.features import cached_views, train_preprocess

        items = list(data.train_items)
        if not items:
            raise UserError(f"{self.name} needs training images to build its cache")
        dataset = ImageList(items, data.image_root, train_pixels(train_preprocess(self, data.train)))
        raw = cached_views(self, dataset, data.train, data.device, data.precision, data.seed,
                           views=self.options.augment_epoch, encode=self.backbone.encode_image)
        self.set_cache(raw.mean(dim=0), torch.tensor([it.label for it in items]))

    @torch.no_grad()
    def set_cache(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Keys = the normalised (mean) unnormalised features [N, E], values = one-hot labels [N, C]."""
        keys = F.normalize(features.float(), dim=-1)
        values = F.one_hot(labels.to(keys.device), len(self.classnames)).float()
        self.cache_keys = keys.to(self.cache_keys.dtype)
        self.cache_values = values.to(self.cache_values.dtype)

    def val_features(self, data: TrainingData) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalised frozen features of the validation images (test transform; the exact cache)
        and their labels, or None without validation images."""
        from cpbench.engine.features import encode_all, image_features

        val = list(data.val_items)
        if not val:
            return None
        bs, workers = data.train.test_batch_size, data.train.num_workers
        feats, _ = image_features(self, val, data.image_root, data.device, data.precision, bs, workers, data.cache,
                                  data.dataset)
        if feats is None:
            feats = encode_all(self, val, data.image_root, data.device, data.precision, bs, workers)
        return feats.to(data.device).float(), torch.tensor([it.label for it in val])

    def affinity(self, features: torch.Tensor) -> torch.Tensor:
        """f · Kᵀ (Tip-Adapter-F: through its learned keys)."""
        return features.float() @ self.cache_keys.float().t()

    def search(self, val: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """β, α from ``search_hp`` on the validation features (else the initial values)."""
        o = self.options
        beta, alpha, searched = o.init_beta, o.init_alpha, 0.0
        if val is not None and o.search:
            f, labels = val
            with torch.no_grad():
                clip = CLIP_SCALE * f @ self.classifier().t()
                beta, alpha, _ = search_hp(self.affinity(f), clip, self.cache_values.float(), labels, o)
            searched = 1.0
        with torch.no_grad():
            self.beta.fill_(beta)
            self.alpha.fill_(alpha)
            self.searched.fill_(searched)

    def fit(self, data: TrainingData) -> None:
        self.build_cache(data)
        self.search(self.val_features(data))

    # ------------------------------------------------------------------ evaluation
    def eval_context(self) -> Any:
        return self.classifier()

    def tip_logits(self, features: torch.Tensor, weights: torch.Tensor, beta, alpha) -> torch.Tensor:
        if self.cache_keys.shape[0] == 0:
            raise UserError(f"{self.name} has no cache: it was never built from training images")
        f = features.float()
        cache = cache_logits(self.affinity(f), self.cache_values.float(), beta)
        return CLIP_SCALE * f @ weights.float().t() + cache * alpha

    def logits_from_features(self, image_features, context):
        return self.tip_logits(image_features, context, self.beta.float(), self.alpha.float())
