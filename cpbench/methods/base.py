"""The contract every method fulfils.

A method declares its learnable parameters (``requires_grad=True``; the backbone stays frozen),
builds class text features and image features, returns logits and a dict of *weighted* loss
terms whose sum is the training loss, and may act at epoch ends. It knows nothing about loops,
devices, files or the CLI.

Evaluation is split in two so the engine can cache what is exact to cache:
``eval_context()`` runs once per evaluation (e.g. class text features), ``encode_images`` maps a
batch to image features (cacheable when ``image_prompted`` is False), and
``logits_from_features`` turns features into logits.

Persistent state (what a checkpoint holds) is ``learned_state()``: every entry of
``state_dict()`` outside the backbone. Frozen pieces derived from class names or the backbone
(token prefixes/suffixes, teacher features) are registered as non-persistent buffers and rebuilt
by ``set_classnames``.

Every hook the engine calls is declared here, with its default:

- training: ``forward_train`` (one batch -> logits and weighted loss terms), ``backward`` (how
  the terms become gradients: their sum, by default), ``prepare_training`` (once before the
  first epoch, with the training data: CPL encodes its negative images), ``on_epoch_end``,
  ``on_train_end``;
- ``closed_form = True`` methods are not trained by the generic loop: ``fit`` gives them their
  state from the training data (the linear probe's logistic regression, a training-free cache);
- evaluation: ``eval_context``, ``encode_images``, ``logits_from_features``;
- classes: ``set_classnames``, ``set_training_subset``, ``takes_new_classes``,
  ``options_for_classes``; capabilities: the class flags below, ``unsupported`` (a protocol) and
  ``backbone_unsupported`` (a backbone's towers, with ``models/families.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.config import coerce
from cpbench.errors import UserError
from cpbench.models import families
from cpbench.models.backbone import Backbone

if TYPE_CHECKING:
    from cpbench.config import TrainConfig
    from cpbench.data.splits import Item
    from cpbench.engine.cache import FeatureCache
    from cpbench.engine.precision import Precision


@dataclass
class Options:
    """Method-specific settings; subclasses add typed fields (the YAML ``method:`` section)."""

    @classmethod
    def from_dict(cls, d: dict, where: str = "method options") -> "Options":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"unknown {where} key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known)) or 'none'}")
        kwargs = {}
        for k, v in d.items():
            kwargs[k] = coerce(v, known[k].type, f"{where}.{k}")
        return cls(**kwargs)


@dataclass(frozen=True)
class TrainingData:
    """What the engine hands ``prepare_training`` and ``fit``: the job's training data and where it
    runs. ``train_items`` / ``val_items`` are the few-shot split of the training classes (labels in
    the method's class order); ``cache`` is the exact frozen-feature cache of test views (None when
    the run says ``--no-cache``) and ``dataset`` its tag for these images."""
    train_items: Sequence["Item"]
    val_items: Sequence["Item"]
    image_root: Path
    device: torch.device
    precision: "Precision"
    train: "TrainConfig"
    seed: int
    cache: "FeatureCache | None" = None
    dataset: str = ""


def clean(name: str) -> str:
    return name.replace("_", " ")


class Method(nn.Module):
    name: ClassVar[str] = "method"
    Options: ClassVar[type[Options]] = Options
    image_prompted: ClassVar[bool] = False   # prompts enter the image encoder: no image-feature caching
    feature_training: ClassVar[bool] = False  # forward_train_features is valid (opt-in cached train views)
    # the images reach the training loss only through the frozen, unprompted image encoder:
    # forward_train(x, y) is exactly forward_train_frozen(backbone.encode_image(x), y), so the
    # training-view store (engine/views.py) can serve that output (tests/test_view_store.py checks it)
    view_store: ClassVar[bool] = False
    trainable: ClassVar[bool] = True         # zero-shot CLIP / linear probe set this False / custom
    seed_dependent: ClassVar[bool] = True    # False: the seed changes nothing (zero-shot CLIP); never flagged for seeds
    # evaluating a subset of the training classes (DG: ImageNet -> A/R) must rebuild the method on
    # the target's class names rather than keep logit columns: its score of one class depends on the
    # other classes (Bayesian PL averages softmaxes over Monte-Carlo samples); see protocols/gather.py
    rebuild_on_target_classes: ClassVar[bool] = False
    new_classes: ClassVar[bool] = True       # can score classes it was not trained on (see takes_new_classes)
    # the classifier is a fixed matrix of class text features applied to the frozen, unprompted image
    # features (logits = logit_scale * normalise(f) @ eval_context().T): an export can then carry the
    # final text features, usable with plain open_clip
    text_classifier: ClassVar[bool] = False
    # continual learning (protocols/continual.py): the method is built on each task's classes in
    # turn and its shared learned state carries over. ``class_rows`` names the learned-state
    # entries that hold one slice per class and their class axis (LAMM's label rows): they GROW,
    # task by task, and the rows of earlier tasks are never trained again.
    continual: ClassVar[bool] = True
    class_rows: ClassVar[dict[str, int]] = {}
    # few-shot image-text retrieval (protocols/retrieval.py): every caption is a "class name", so
    # the class prompts must be built from the name alone plus shared learned state
    retrieval: ClassVar[bool] = False
    # what it needs from the backbone's towers, checked from the model config before anything loads
    # (cpbench/models/families.py; `cpbench list --backbones`): learned token embeddings fed to the
    # text transformer (not a Hugging Face text model), prompts replacing tokens before the text
    # layers, prompts inserted into the image tower's layers (a ViT, not a ResNet/ConvNeXt/FastViT)
    text_prompts: ClassVar[bool] = False
    deep_text_prompts: ClassVar[bool] = False
    vision_prompts: ClassVar[bool] = False
    # the learned state is fitted by ``fit`` (closed form, or a loop of the method's own), not by
    # the generic training loop: the linear probe, training-free caches
    closed_form: ClassVar[bool] = False
    # learned-state entries whose first axis holds one row per training image (Tip-Adapter's cache
    # keys and values): their length comes from the training data, not from the options, so a
    # method built on the class names alone takes it from the state it loads
    data_rows: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: Backbone, classnames: list[str], options: Options, template: str = "a photo of a {}."):
        super().__init__()
        why = families.unsupported(type(self), backbone.facts, backbone.spec.name)
        if why:  # validation refuses this before loading; a backbone built by hand gets the same line
            raise UserError(why)
        self.backbone = backbone
        self.options = options
        self.template = template
        self.classnames = list(classnames)

    # ------------------------------------------------------------------ capabilities
    @classmethod
    def unsupported(cls, protocol: str, options: Options) -> str:
        """Why this method, with these options, cannot run ``protocol`` (one line); "" if it can."""
        if protocol == "continual" and not cls.continual:
            return (f"{cls.name} cannot learn classes task after task: its learned state is fitted to one fixed "
                    "set of classes; use a prompt method such as coop or lamm")
        if protocol == "retrieval" and not cls.retrieval:
            return (f"{cls.name} has no image-text retrieval mode (its prompts are not built from a caption and "
                    "shared learned state alone); use zeroshot, coop, cocoop or cpl")
        return ""

    @classmethod
    def backbone_unsupported(cls, facts: "families.Facts", backbone: str = "this backbone") -> str:
        """Why this method cannot run on a backbone with these tower facts beyond what its
        ``text_prompts`` / ``deep_text_prompts`` / ``vision_prompts`` flags say (one line, from the model
        config before anything loads: ``models/families.py``); "" if it can. Default: nothing more
        (CLIP-LoRA needs CLIP's causal text transformer and open_clip's ViT)."""
        return ""

    @classmethod
    def options_for_classes(cls, options: Options, classnames: list[str], backbone: Backbone) -> Options:
        """Options that give every subset of ``classnames`` the same parameter shapes (continual
        learning builds the method on one task's classes at a time). Default: ``options``."""
        return options

    # ------------------------------------------------------------------ classes
    @classmethod
    def takes_new_classes(cls, options: Options) -> bool:
        """Whether a model with these options can score classes it was not trained on."""
        return cls.new_classes

    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild everything derived from class names (learned parameters are kept)."""
        self.classnames = list(classnames)

    def set_training_subset(self, classnames: list[str], rows: list[int]) -> None:
        """Score a subset of the training classes: ``classnames[i]`` is training class ``rows[i]``
        (its index in the list the method was built on). Methods with per-class learned rows keep
        them (LAMM); by default this is ``set_classnames``."""
        self.set_classnames(classnames)

    # ------------------------------------------------------------------ training
    def forward_train(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def backward(self, losses: dict[str, torch.Tensor], scale: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Turn one batch's loss terms into gradients of the learnable parameters. ``scale`` is the
        fp16 loss scaler's (the identity when there is none); the engine steps the optimiser
        afterwards. Default: backward of the sum of the terms. A method whose update is not the
        gradient of one scalar overrides this."""
        scale(sum(losses.values())).backward()

    def forward_train_features(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training step from precomputed (normalised, frozen) image features; only used when
        ``feature_training`` is True and the user opted in with ``feature_views > 0``."""
        logits = self.logits_from_features(features, self.eval_context())
        return logits, {"ce": F.cross_entropy(logits, labels)}

    def forward_train_frozen(self, encoded: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training step from ``backbone.encode_image(images)`` as the frozen encoder returned it (its
        dtype, unnormalised); used for ``view_store`` methods, where it must equal ``forward_train``
        bit for bit. Default: ``forward_train_features`` of the normalised features (``encode_images``)."""
        return self.forward_train_features(F.normalize(encoded.float(), dim=-1), labels)

    def prepare_training(self, data: TrainingData) -> None:
        """Called once before the generic loop trains (not when a final checkpoint is loaded), with
        the training data; for what a method derives from the training images themselves (CPL's
        negative images). Default: nothing."""

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called after each training epoch (0-based ``epoch``)."""

    def on_train_end(self) -> None:
        """Called once after the last epoch."""

    def fit(self, data: TrainingData) -> None:
        """``closed_form`` methods: set the learned state from the training data (called instead of
        the generic loop, once; the result is checkpointed like a trained state)."""
        raise NotImplementedError(f"{self.name} declares closed_form but has no fit()")

    # ------------------------------------------------------------------ evaluation
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError

    def eval_context(self) -> Any:
        return F.normalize(self.text_features().float(), dim=-1)

    def logits_from_features(self, image_features: torch.Tensor, context: Any) -> torch.Tensor:
        return self.backbone.logit_scale.float() * image_features.float() @ context.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.encode_images(images), self.eval_context())

    # ------------------------------------------------------------------ state
    def learned_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_learned_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.learned_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit {self.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for k, v in state.items():
                own_t = self.get_parameter(k) if k in dict(self.named_parameters()) else self.get_buffer(k)
                own_t.copy_(v.to(own_t.dtype))

    def n_learnable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
