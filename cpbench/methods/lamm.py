"""LAMM (Gao et al., AAAI'24): learnable label embeddings + a hierarchical loss (methods.md §3.2).

The embeddings of the first ``L_lab`` BPE tokens of each class name become a learnable tensor
``token_classes`` [C, L_lab, D] (official name), initialised from the name's token embeddings;
a frozen copy ``fix_token`` keeps the initial value for the parameter loss. The prompt is
``[SOS] ctx  token_classes[c]  <rest of the name> . [EOS]``. ``L_lab`` (``label_len``) = 0
means the official CoOp-trainer rule: the minimum name length in tokens over the classes.

Variants (one class each, the same code):
- ``coop_lamm`` — CoOp + LAMM: ctx is learned too (the golden ``lamm_L2`` case);
- ``lamm`` — the official ``--origin-clip``: ctx frozen at "a photo of a", only labels learn;
- ``maple_lamm`` — MaPLe + LAMM (official trainers/maple.py): L_lab hard-coded to 1 and the
  label row goes to prompt position 1+n_ctx. With MaPLe's n_ctx = 2 of "a photo of a" that
  position holds "of", so the official prompt is ``[SOS] ctx₁ ctx₂ E_lab,c a <full name> .``:
  the learned row REPLACES "of" and the whole name stays in the suffix (the official
  ``token_suffix = embedding[:, 1 + min_len + n_ctx:]``). Reproduced as is. The original-label
  features t̄ are plain MaPLe prompts with the current ctx and deep text prompts; the image
  features are MaPLe's prompted ones.

Hierarchical loss (``--triplet-loss``, on in every official script), terms as returned:
- ``ce``      CE(z, y), z = s·f·tᵀ with the learned-label text features t;
- ``param``   (1/K)·‖token_classes − fix_token‖²_F (MSE, reduction sum). K = ``param_shots``.
  **Default 1**: the official few-shot / base-to-new scripts never pass ``--shots``, so the
  official weight is 1 (only LAMM's continual "set" scripts pass 16). Set ``param_shots`` to
  the shot count to follow the paper's text instead;
- ``feature`` mean over samples i whose label differs from some other label in the batch of
  1 − cos(t_{y_i}, stopgrad(t̄_{y_i})), t̄ = features of the same prompt with the ORIGINAL name
  tokens and the current ctx (0 when no sample qualifies, e.g. a one-class batch);
- ``logit``   0.05 · T²·CE_soft(input = z̄/T, target = softmax(z/T)), T = 2: the soft target is
  the learned-label logits and is NOT detached (official ``distillation(t=logits, s=fix)``).

Which class uses which learned row: by class INDEX within the training class list, never by
name (ImageNet's names repeat: "missile" 657/744, "sunglasses" 836/837; a name map would give each
pair one shared row and orphan the other). ``set_classnames`` gives class i row i when the new
list is the training list itself (training, base evaluation, few-shot; ImageNet-V2 and -Sketch,
whose 1000 classes are ImageNet's in wnid order), and the original name tokens for every class of
any other list: new classes get the plain CoOp/MaPLe prompt with the learned ctx, as the official
``--eval-only`` new-class path (which has no learned labels at all), and so do other datasets'
classes (the official code cannot load 1000 learned rows into another class count). ImageNet-A/-R
(DG) keep the training list and select the 200 logit columns by wnid
(``protocols/gather.py``), so their classes keep their learned rows. Only ``end`` class-token
position is supported (the official code raises otherwise).

Issue 18 audit item (3), duplicate class names sharing one row: fixed (rows by index). MaPLe+LAMM
and checkpoints: the official MaPLe trainer's ``load_model`` deletes ``token_classes`` from a
loaded checkpoint (so its eval-only runs use the initial label embeddings); importing an official
checkpoint (``cpbench/state/official.py``) keeps the learned rows.

Continual learning (``--protocol continual``, LAMM's claim; cpbench/protocols/continual.py): the
label rows and their frozen copies are ``class_rows``, so every task adds fresh rows for its own
classes and the rows of earlier tasks are never trained again. With the context frozen (``lamm``)
the old classes' prompts, hence their logits, stay bit-identical; ``coop_lamm`` and ``maple_lamm``
keep training their shared context on later tasks. ``label_len`` 0 is resolved over all the
dataset's classes there (``options_for_classes``), and lamm.yaml's ``continual`` block sets
``param_shots`` to 16 as the official set scripts do. No retrieval mode: a row learned for a
training caption never applies to a test caption.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import clean
from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.maple import MaPLe, MaPLeOptions


@dataclass
class CoOpLAMMOptions(CoOpOptions):
    label_len: int = 0            # L_lab; 0 = min name length in tokens over the training classes
    train_ctx: bool = True        # False = official --origin-clip (variant "lamm")
    hierarchical_loss: bool = True  # official --triplet-loss
    param_shots: int = 1          # K in (1/K)·MSE-sum; official scripts leave it at 1
    feature_weight: float = 1.0
    logit_weight: float = 0.05
    temperature: float = 2.0
    random_init: bool = False     # official --random-init: labels ~ N(0, 0.02²)


@dataclass
class LAMMOptions(CoOpLAMMOptions):
    train_ctx: bool = False


def distillation(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T²·CE(student/T, softmax(teacher/T)), batch mean; the teacher keeps its gradient."""
    p = F.softmax(teacher_logits / T, dim=1)
    return F.cross_entropy(student_logits / T, p) * (T ** 2)


def feature_loss(text: torch.Tensor, fix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean over samples with a label that differs from some other label in the batch of
    1 − cos(text[y_i], stopgrad(fix[y_i])); 0 if none qualifies."""
    keep = (labels.unsqueeze(0) != labels.unsqueeze(1)).any(dim=1)
    if not bool(keep.any()):
        return text.new_zeros(())
    idx = labels[keep]
    cos = F.cosine_similarity(text[idx], fix[idx].detach(), dim=-1)
    return (1 - cos).mean()


class LabelRows:
    """Mixin: learnable label rows ``token_classes`` [C_train, L_lab, D] + frozen ``fix_token``,
    one per training class (by index), written into prompt positions 1+n_ctx .. 1+n_ctx+L_lab."""

    # continual learning: one label row per class, grown task by task (old rows stay as trained)
    class_rows = {"token_classes": 0, "fix_token": 0}
    # a learned row per training caption would never apply to a test caption
    retrieval = False

    @classmethod
    def options_for_classes(cls, options, classnames, backbone):
        """``label_len`` 0 (the minimum name length) resolved over ALL ``classnames``, so the rows
        of every task have the same length."""
        if options.label_len:
            return options
        return dataclasses.replace(options, label_len=min(backbone.n_tokens(clean(c)) for c in classnames))

    def _init_label_rows(self, backbone, classnames, label_len: int, random_init: bool) -> None:
        self.label_names = [clean(c) for c in classnames]
        lens = [backbone.n_tokens(n) for n in self.label_names]
        self.label_len = label_len or min(lens)
        if self.label_len < 1 or self.label_len > min(lens):
            raise UserError(f"label_len must be between 1 and the shortest class name ({min(lens)} tokens); 0 = that minimum")
        ids = backbone.tokenize(self.label_names)
        with torch.no_grad():
            s = backbone.text_start
            emb = backbone.token_embedding(ids)[:, s: s + self.label_len].float().clone()
        if random_init:
            emb = torch.randn_like(emb) * 0.02
        self.token_classes = nn.Parameter(emb.to(backbone.dtype))
        # frozen copy for the parameter loss (persistent: with random_init it is not rebuildable)
        self.register_buffer("fix_token", emb.to(backbone.dtype).clone())
        self._build_label_index()

    def _build_label_index(self) -> None:
        """Row of each current class: its index when the current list is the training list,
        else -1 (original name tokens); never matched by name (names can repeat)."""
        n = len(self.classnames)
        same = [clean(c) for c in self.classnames] == self.label_names
        idx = torch.arange(n) if same else torch.full((n,), -1, dtype=torch.long)
        self.register_buffer("label_row", idx.to(self.token_classes.device), persistent=False)

    def set_training_subset(self, classnames: list[str], rows: list[int]) -> None:
        """A subset of the training classes keeps each class's learned row, by training index
        (continual learning evaluates the classes of one task this way)."""
        self.set_classnames(classnames)
        self.label_row = torch.tensor(list(rows), dtype=torch.long, device=self.token_classes.device)

    def shared_prefix(self) -> int:
        """The encoder's shared prefix stops before the (per-class) label rows."""
        return min(super().shared_prefix(), self.backbone.text_start + self.n_ctx)

    def with_label_rows(self, base: torch.Tensor) -> torch.Tensor:
        """Assembled prompts [C, L, D] with tokens 1+n_ctx .. +L_lab replaced by the learned label
        rows for classes that were trained (others keep their original tokens)."""
        rows = self.label_row
        if not bool((rows >= 0).any()):
            return base
        s = self.backbone.text_start + self.n_ctx
        e = s + self.label_len
        labels = self.token_classes[rows.clamp(min=0)].to(base.dtype)
        mid = torch.where((rows >= 0).view(-1, 1, 1), labels, base[:, s:e])
        return torch.cat([base[:, :s], mid, base[:, e:]], dim=1)

    def hierarchical_terms(self, image_features, text, fix, labels) -> tuple[torch.Tensor, dict]:
        """text / fix: normalised learned-label / original-label class features [C, D]."""
        o = self.options
        scale = self.backbone.logit_scale.float()
        logits = scale * image_features @ text.t()
        fix_logits = scale * image_features @ fix.t()
        return logits, {
            "ce": F.cross_entropy(logits, labels),
            "param": F.mse_loss(self.token_classes.float(), self.fix_token.float(), reduction="sum") / o.param_shots,
            "feature": o.feature_weight * feature_loss(text, fix, labels),
            "logit": o.logit_weight * distillation(logits, fix_logits, o.temperature),
        }


def _check(options) -> None:
    if options.param_shots < 1:
        raise UserError("param_shots must be >= 1 (the K of the (1/K)·MSE parameter loss)")


class CoOpLAMM(LabelRows, CoOp):
    name = "coop_lamm"
    Options = CoOpLAMMOptions

    def __init__(self, backbone, classnames, options: CoOpLAMMOptions, template="a photo of a {}."):
        if options.class_token_position != "end":
            raise UserError("LAMM supports class_token_position=end only (as the official code)")
        _check(options)
        super().__init__(backbone, classnames, options, template)
        if not options.train_ctx:
            self.ctx.requires_grad_(False)
        self._init_label_rows(backbone, classnames, options.label_len, options.random_init)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self._build_label_index()

    def learned_prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.with_label_rows(self.assemble(ctx))

    def text_features(self) -> torch.Tensor:
        return self.backbone.text(self.learned_prompts(self.context()), self.prompts.eot, shared=self.shared_prefix())

    def _train_losses(self, image_features: torch.Tensor, labels: torch.Tensor):
        if not self.options.hierarchical_loss:
            text = F.normalize(self.text_features().float(), dim=-1)
            logits = self.backbone.logit_scale.float() * image_features @ text.t()
            return logits, {"ce": F.cross_entropy(logits, labels)}
        ctx = self.context()
        c = self.prompts.n_cls
        both = torch.cat([self.learned_prompts(ctx), self.assemble(ctx)], dim=0)
        eot = torch.cat([self.prompts.eot, self.prompts.eot])
        feats = F.normalize(self.backbone.text(both, eot, shared=self.shared_prefix()).float(), dim=-1)
        return self.hierarchical_terms(image_features, feats[:c], feats[c:], labels)

    def forward_train(self, images, labels):
        return self._train_losses(self.encode_images(images), labels)

    def forward_train_features(self, features, labels):
        return self._train_losses(features.float(), labels)


class LAMM(CoOpLAMM):
    """LAMM alone (official ``--origin-clip``): ctx frozen at "a photo of a"."""

    name = "lamm"
    Options = LAMMOptions


@dataclass
class MaPLeLAMMOptions(MaPLeOptions):
    label_len: int = 1            # the official MaPLe trainer hard-codes 1
    hierarchical_loss: bool = True
    param_shots: int = 1
    feature_weight: float = 1.0
    logit_weight: float = 0.05
    temperature: float = 2.0
    random_init: bool = False


class MaPLeLAMM(LabelRows, MaPLe):
    """MaPLe + LAMM (official LAMM trainers/maple.py)."""

    name = "maple_lamm"
    Options = MaPLeLAMMOptions

    def __init__(self, backbone, classnames, options: MaPLeLAMMOptions, template="a photo of a {}."):
        _check(options)
        super().__init__(backbone, classnames, options, template)
        self.n_ctx = options.n_ctx
        self._init_label_rows(backbone, classnames, options.label_len, options.random_init)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self._build_label_index()

    def text_features(self) -> torch.Tensor:
        return self.backbone.text(self.with_label_rows(self.prompts.assemble(self.ctx)), self.prompts.eot,
                                  deep=self.deep_text(), shared=self.shared_prefix())

    def forward_train(self, images, labels):
        f = self.encode_images(images)
        if not self.options.hierarchical_loss:
            text = F.normalize(self.text_features().float(), dim=-1)
            logits = self.backbone.logit_scale.float() * f @ text.t()
            return logits, {"ce": F.cross_entropy(logits, labels)}
        c = self.prompts.n_cls
        base = self.prompts.assemble(self.ctx)
        both = torch.cat([self.with_label_rows(base), base], dim=0)
        eot = torch.cat([self.prompts.eot, self.prompts.eot])
        feats = F.normalize(self.backbone.text(both, eot, deep=self.deep_text(), shared=self.shared_prefix()).float(),
                            dim=-1)
        return self.hierarchical_terms(f, feats[:c], feats[c:], labels)
