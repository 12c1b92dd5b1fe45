"""CPL — Counterfactual Prompt Learning (He et al., EMNLP'22; methods.md §3.5; official
eric-ai-lab/CPL ce47190 ``CPL/trainers/cocoopcf.py``, ``CPL/utils/solver.py``).

Base model: CoCoOp (``cpbench.methods.cocoop``: ctx from "a photo of a" + meta-net π =
Linear(E→E/16)–ReLU–Linear(E/16→D) on the normalised image feature, π(x) added to every context
token, one prompt set per image); CPL subclasses it.
CPL adds a learnable mask ``u`` [E, C] (official name and layout, init ones), kept in fp32 under
fp16 runs as the official ``nn.Parameter(torch.ones(...))`` (its updates are ~1e-5 and would round
away in half precision), and a counterfactual branch used only in training:

1. Negative class (``neg_class``) of each class, option ``negatives``:
   - ``clip`` (default, offline): the most similar OTHER class name by the cosine of the frozen
     CLIP text features of the plain names (no template) — a stand-in for the paper's BERTScore;
   - ``bertscore``: the official ``init_score_dict``: BERTScore F1 (``bert-score`` package,
     ``lang="en"`` = roberta-large; ``pip install 'cpbench[bertscore]'``, downloads the model) of
     every class name against every class name (raw names, as the official code), and the second
     best of each row (``topk(2)[1][1]``: the best other class);
   - a file: ``.json`` {class name: negative class name}, or ``.npy``: the official ``score.npy``
     (a ``np.save``d dict; read without unpickling code: only numpy's array reconstruction is
     allowed) or a C×C numeric score matrix (second best of each row, as ``init_score_dict``).
   The file's path is part of the config (and its hash), not its content.
2. Negative image: one few-shot training image of the negative class (the first one in split
   order; the official ``cname2img`` takes an arbitrary one from a set), preprocessed as the
   official ``ntransform``: Resize((S, S)) + ToTensor + Normalize (no crop, no flip), encoded
   once by the frozen image encoder. The engine hands the training items to
   ``prepare_training(train_items, image_root, device)`` before training (tests may call
   ``set_negative_features`` instead).
3. Target mask u* in {−1, 1}^E (paper Eq. 2, official ``utils/solver.py``), greedy on the raw
   (unnormalised) image features v and v⁻: repeatedly swap in the single dimension of v⁻ that
   maximises the negative class's logit (plain class-name text features), until the negative logit
   exceeds the positive one (at least one swap, at most E). u*[chosen] = 1, else −1. Computed on
   the fly (exact, O(E) per step from the running dot product and norm). Options:
   - ``search_text_normalized`` (default true, a deviation): the stopping test compares logits with
     L2-normalised class-name text features, i.e. it stops when CLIP's prediction between the two
     names flips; the official code uses unnormalised text features (false). The choice of
     dimension is the same either way;
   - ``edit_rule``: ``argmax`` (default) takes the best dimension whatever its logit; ``official``
     = ``get_next_edit``, which accepts a dimension only if its negative logit is > 0 (its running
     best starts at 0.0) and otherwise returns edit −1, so Python indexing swaps the LAST dimension
     (which stays a candidate later: the exclusion list holds −1, not E−1);
   - ``target_mask``: ``view`` (default) searches u* for every training view (augmented image)
     anew; ``class`` fixes u* per class for the whole run, as the official flow (precomputed
     ``weights/*.pth`` masks, one per dataset and seed): computed once, before training, from the
     class's first training image under ``ntransform`` and its negative image.
4. u_b = clamp(0.999·u*_b + 0.001·u[:, y_b], 0, 1) (official ``mupdate``), with the clamp's
   gradient 1 on the closed interval [0, 1] as in the PyTorch the official code ran on (subgradient
   1 at min and max since PyTorch PR #7049, 2018). Recent PyTorch gives the scalar-bound clamp
   gradient 0 AT its bounds (PR #191142), and u starts at exactly 1 where 0.999 + 0.001·1 = 1:
   with a plain ``torch.clamp`` u would never receive a gradient (``mupdate`` below keeps the old
   subgradient). Then the counterfactual feature v′, option ``cf_mix``:
   - ``paper`` (default): v′ = normalise((1 − u_b)⊙v̂ + u_b⊙v̂⁻), paper Eq. 2, element-wise;
   - ``official``: what the official ``cfgen`` computes at its batch size 1: ``u[:, y]`` is
     [E, 1] and v̂ is [1, E], so ``(1−u[:,y])*x + u[:,y]*nx`` broadcasts to an [E, E] outer product
     of which the loss loop keeps row 0: v′ = normalise((1 − u_b[0])·v̂ + u_b[0]·v̂⁻), ONE scalar
     weight, the mask value of dimension 0 for every dimension. When dimension 0 is not in u*
     (u_b[0] = 0), v′ = v̂ and the contrastive term is the constant log 2 with zero gradient.

Loss terms (per image, averaged over the batch; at the official batch 1 this is the code's sum):
``ce`` CE(z, y); ``cl`` λ·mean_c −log softmax([cos(t_c, v̂), cos(t_c, v′)])[0] over the image's
C class prompt features t_c (temperature 1, λ = 1, official ``xloss_compute``); ``mask``
c·‖u_b‖₂ with c = 0.07 (the official ``torch.norm(u, dim=0)`` of the whole column in both mixing
modes). Inference = CoCoOp.

Configuration: no CPL config ships in the repository (``configs/trainers/CoCoOpcf/`` is missing);
``cpl.yaml``'s values are inferred (the README's CoCoOp config + ``CustomCLIP.forward``'s
constants).

Issue 18 audit items, status: (4) ``u`` fp32 under fp16 — fixed (and its clamp subgradient kept,
so it moves at all); (6) counterfactual mixing,
solver acceptance rule, per-run target mask — the paper's / cpbench's forms stay the defaults, the
official behaviours are the options ``cf_mix: official``, ``edit_rule: official``,
``target_mask: class``; (7) negatives — ``negatives: clip`` (default), ``bertscore``, or a file.

Continual learning: the mask columns ``u`` are ``class_rows`` (fresh columns of ones for each
task's classes). Retrieval (CPL's image-text retrieval experiment): every caption is a class, its
negative the most similar other caption and that caption's image (cpbench/protocols/retrieval.py).

"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import TrainingData, clean
from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions
from cpbench.methods.deep_prompts import OfficialFloat32
from cpbench.state import unpickle

CF_MIX = ("paper", "official")
EDIT_RULES = ("argmax", "official")
TARGET_MASKS = ("view", "class")


@dataclass
class CPLOptions(CoCoOpOptions):
    cl_weight: float = 1.0        # λ (official ``lam``)
    mask_weight: float = 0.07     # c (official ``control_scale``)
    mask_momentum: float = 0.999  # u = clamp(m·u* + (1−m)·u_learned, 0, 1) (official ``mupdate``)
    search_text_normalized: bool = True
    negatives: str = "clip"       # clip | bertscore | PATH (.json name -> negative name, or the official score.npy)
    cf_mix: str = "paper"         # paper (Eq. 2, element-wise) | official (cfgen at batch 1: mask dim 0 only)
    edit_rule: str = "argmax"     # argmax | official (an edit needs a negative logit > 0, else the last dim)
    target_mask: str = "view"     # view (u* per training view) | class (fixed per class for the run, official)


def greedy_mask(v: torch.Tensor, v_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor,
                edit_rule: str = "argmax") -> torch.Tensor:
    """Greedy minimal swap set (paper Eq. 2) for a batch: v, v_neg [B, E] raw image features;
    t_pos, t_neg [B, E] text features of the positive / negative class name. Returns a bool mask
    [B, E] of the swapped dimensions: swap, one at a time, the dimension of v_neg that maximises
    the negative logit of the current (renormalised) feature, until neg > pos (>= 1 swap).
    ``edit_rule="official"``: a dimension is taken only if that logit is > 0, else dimension −1
    (the last) is swapped and marked, without leaving the candidates (official ``get_next_edit``)."""
    v = v.float().clone()
    v_neg = v_neg.float()
    t_pos, t_neg = t_pos.float(), t_neg.float()
    b, e = v.shape
    chosen = torch.zeros(b, e, dtype=torch.bool, device=v.device)     # marked in u*
    excluded = torch.zeros(b, e, dtype=torch.bool, device=v.device)   # no longer candidates
    active = torch.ones(b, dtype=torch.bool, device=v.device)
    rows = torch.arange(b, device=v.device)
    for _ in range(e):
        dot_n = (v * t_neg).sum(-1, keepdim=True)
        norm2 = (v * v).sum(-1, keepdim=True)
        cand = (dot_n + (v_neg - v) * t_neg) / (norm2 - v * v + v_neg * v_neg).clamp_min(1e-30).sqrt()
        cand = cand.masked_fill(excluded, float("-inf"))
        best, pick = cand.max(dim=-1)
        if edit_rule == "official":
            fallback = ~(best > 0)
            pick = torch.where(fallback, torch.full_like(pick, e - 1), pick)
        else:
            fallback = torch.zeros_like(active)
        r, p = rows[active], pick[active]
        chosen[r, p] = True
        keep = ~fallback[active]
        excluded[r[keep], p[keep]] = True
        v[r, p] = v_neg[r, p]
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


def mupdate(ustar: torch.Tensor, u: torch.Tensor, momentum: float) -> torch.Tensor:
    """clamp(m·u* + (1−m)·u, 0, 1) with gradient 1 on the closed interval [0, 1] (the official
    PyTorch's clamp subgradient; see the module docstring), 0 outside."""
    x = momentum * ustar + (1 - momentum) * u
    return torch.where((x >= 0) & (x <= 1), x, x.detach().clamp(0, 1))


def counterfactual(f: torch.Tensor, f_neg: torch.Tensor, u: torch.Tensor, mix: str) -> torch.Tensor:
    """v′ from normalised v̂, v̂⁻ [B, E] and the mask u_b [B, E] (see the module docstring)."""
    w = u if mix == "paper" else u[:, :1]
    return F.normalize((1 - w) * f + w * f_neg, dim=-1)


# ---------------------------------------------------------------------------- negative classes
def second_best(scores: torch.Tensor) -> torch.Tensor:
    """Official ``init_score_dict`` rule on a C×C score matrix: index of each row's 2nd largest."""
    return scores.topk(2, dim=1).indices[:, 1]


def bertscore_negatives(classnames: list[str], score=None) -> torch.Tensor:
    """BERTScore F1 of every class name (candidate) against every class name (reference), as the
    official ``init_score_dict`` (``lang="en"``), then the second best per row. ``score``: the
    scorer (default ``bert_score.score``)."""
    if score is None:
        try:
            from bert_score import score
        except ModuleNotFoundError:
            raise UserError("CPL negatives: bertscore needs the bert-score package: pip install 'cpbench[bertscore]' "
                            "(or use negatives: clip, or a negatives file)") from None
    c = len(classnames)
    cands = [n for n in classnames for _ in range(c)]
    refs = list(classnames) * c
    _, _, f1 = score(cands, refs, lang="en", verbose=False)
    return second_best(torch.as_tensor(f1, dtype=torch.float64).reshape(c, c))


def read_score_npy(path: Path):
    """The official ``score.npy``: a dict {class name: negative name} saved by ``np.save`` (an
    object array, read without unpickling code), or a numeric C×C score matrix."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        pass
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise UserError(f"CPL negatives {path}: unsupported .npy version {version}")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        _, _, dtype = read_header(fh)
        if not dtype.hasobject:
            raise UserError(f"CPL negatives {path}: not a score dict or matrix")
        try:  # numpy's array reconstruction and nothing else: no code runs (cpbench/state/unpickle.py)
            arr = unpickle.load(fh, unpickle.numpy_arrays(), f"CPL negatives {path}", "the official score.npy "
                                "holds a dict of class names")
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise UserError(f"CPL negatives {path}: not the official score.npy ({exc})") from None
    obj = arr.item() if getattr(arr, "shape", None) == () else arr
    if not isinstance(obj, dict):
        raise UserError(f"CPL negatives {path}: expected a dict of class name -> negative name")
    return obj


def file_negatives(path: str, classnames: list[str]) -> torch.Tensor:
    """Negative class index of each class from a user file (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"CPL negatives {path}: no such file; use clip, bertscore, a .json or the official score.npy")
    if p.suffix == ".json":
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"CPL negatives {path}: not valid JSON ({exc.__class__.__name__})") from None
    elif p.suffix == ".npy":
        obj = read_score_npy(p)
    else:
        raise UserError(f"CPL negatives {path}: use a .json map or the official score.npy")
    if not isinstance(obj, dict):
        scores = torch.as_tensor(obj, dtype=torch.float64)
        if tuple(scores.shape) != (len(classnames), len(classnames)):
            raise UserError(f"CPL negatives {path}: score matrix {tuple(scores.shape)} for {len(classnames)} classes")
        return second_best(scores)
    index: dict[str, int] = {}
    for i, n in enumerate(classnames):
        if n in index or clean(n) in index:
            raise UserError(f"CPL negatives {path}: class name {n!r} occurs twice; a name map cannot tell them apart")
        index[n] = index[clean(n)] = i
    missing = [n for n in classnames if n not in obj and clean(n) not in obj]
    if missing:
        raise UserError(f"CPL negatives {path}: no negative for class(es) {missing[:3]}")
    out = []
    for n in classnames:
        neg = obj.get(n, obj.get(clean(n)))
        if not isinstance(neg, str) or (neg not in index and clean(neg) not in index):
            raise UserError(f"CPL negatives {path}: negative {neg!r} of {n!r} is not a class of this dataset")
        out.append(index.get(neg, index.get(clean(neg))))
    return torch.tensor(out, dtype=torch.long)


def _check(o: CPLOptions) -> None:
    for key, value, allowed in (("cf_mix", o.cf_mix, CF_MIX), ("edit_rule", o.edit_rule, EDIT_RULES),
                                ("target_mask", o.target_mask, TARGET_MASKS)):
        if value not in allowed:
            raise UserError(f"CPL {key} must be one of {', '.join(allowed)}, got {value!r}")
    if not o.negatives:
        raise UserError("CPL negatives must be clip, bertscore or a file path")


class CPL(OfficialFloat32, CoCoOp):
    name = "cpl"
    Options = CPLOptions
    fp32_prefixes = ("u",)   # the official mask is an fp32 parameter even under PREC=fp16
    class_rows = {"u": 1}  # one mask column per class: new classes get fresh columns (continual)

    def __init__(self, backbone, classnames, options: CPLOptions, template="a photo of a {}."):
        if len(classnames) < 2:
            raise UserError("CPL needs at least 2 training classes (a negative class per class)")
        _check(options)
        super().__init__(backbone, classnames, options, template)
        self.u = nn.Parameter(torch.ones(backbone.embed_dim, len(classnames), dtype=torch.float32))
        self._build_names()
        self.register_buffer("neg_raw", torch.zeros(0), persistent=False)
        self.register_buffer("class_ustar", torch.zeros(0), persistent=False)   # target_mask: class

    # ------------------------------------------------------------------ classes
    def _build_names(self) -> None:
        with torch.no_grad():
            t = self.backbone.encode_text([clean(c) for c in self.classnames]).float()
        self.register_buffer("name_text", t, persistent=False)          # raw plain-name features
        self._neg_class: torch.Tensor | None = None

    @property
    def neg_class(self) -> torch.Tensor:
        """Negative class index of each current class (option ``negatives``; computed on first use)."""
        if self._neg_class is None:
            kind = self.options.negatives
            if kind == "clip":
                tn = F.normalize(self.name_text, dim=-1)
                sim = tn @ tn.t()
                sim.fill_diagonal_(float("-inf"))
                neg = sim.argmax(dim=-1)
            elif kind == "bertscore":
                neg = bertscore_negatives(list(self.classnames))
            else:
                neg = file_negatives(kind, list(self.classnames))
            self._neg_class = neg
        return self._neg_class.to(self.name_text.device)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        if len(classnames) > 1:
            self._build_names()

    # ------------------------------------------------------------------ negatives
    def set_negative_features(self, raw: torch.Tensor, class_raw: torch.Tensor | None = None) -> None:
        """raw [C, E]: frozen raw image feature of a negative-class image for each class c
        (row c belongs to the image of ``neg_class[c]``); ``class_raw`` [C, E] (``target_mask:
        class``): the raw feature of the image of class c that fixes its u* for the run."""
        if raw.shape[0] != self.prompts.n_cls:
            raise ValueError(f"need one negative feature per class ({self.prompts.n_cls}), got {raw.shape[0]}")
        self.neg_raw = raw.detach().float().to(self.ctx.device)
        if self.options.target_mask == "class":
            if class_raw is None or class_raw.shape[0] != self.prompts.n_cls:
                raise ValueError("target_mask=class needs one image feature per class (class_raw)")
            labels = torch.arange(self.prompts.n_cls, device=self.ctx.device)
            self.class_ustar = self.search_mask(class_raw.detach().float().to(self.ctx.device), labels)

    def prepare_training(self, data: TrainingData) -> None:
        """Pick and encode the negative image of every class from the few-shot train set (and,
        for ``target_mask: class``, fix each class's u* from its own first image)."""
        from cpbench.data.images import ImageList

        image_root, device = data.image_root, data.device
        first: dict[int, Any] = {}
        for it in data.train_items:
            first.setdefault(int(it.label), it)
        pre = self.backbone.preprocess
        size = pre.image_size if isinstance(pre.image_size, (tuple, list)) else (pre.image_size, pre.image_size)
        ntransform = T.Compose([T.Resize(tuple(size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                                T.Normalize(pre.mean, pre.std)])
        negs = [int(n) for n in self.neg_class.tolist()]
        wanted = list(range(self.prompts.n_cls)) if self.options.target_mask == "class" else []
        missing = sorted({n for n in negs + wanted if n not in first})
        if missing:
            raise UserError(f"CPL: no training image for class(es) {missing[:5]}; use a split with every class")

        def encode(classes: list[int]) -> torch.Tensor:
            images = ImageList([first[n] for n in classes], image_root, ntransform)
            batch = torch.stack([images[i][0] for i in range(len(classes))]).to(device or self.ctx.device, self.ctx.dtype)
            with torch.no_grad():
                return torch.cat([self.backbone.encode_image(batch[i: i + 64]).float() for i in range(0, len(batch), 64)])

        self.set_negative_features(encode(negs), encode(wanted) if wanted else None)

    # ------------------------------------------------------------------ training
    def search_mask(self, raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """u* in {−1, 1}: [B, E] for raw image features of classes ``labels``."""
        neg = self.neg_class[labels]
        t_pos, t_neg = self.name_text[labels], self.name_text[neg]
        if self.options.search_text_normalized:
            t_pos, t_neg = F.normalize(t_pos, dim=-1), F.normalize(t_neg, dim=-1)
        chosen = greedy_mask(raw, self.neg_raw[labels], t_pos, t_neg, self.options.edit_rule)
        return chosen.float() * 2 - 1

    def target_mask(self, raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """u* for this batch: searched on the views (``view``) or the run's per-class mask (``class``)."""
        if self.options.target_mask == "class":
            return self.class_ustar[labels]
        return self.search_mask(raw, labels)

    def forward_train(self, images, labels):
        return self.forward_train_frozen(self.backbone.encode_image(images), labels)

    def forward_train_frozen(self, encoded, labels):
        """The training step from the frozen encoder's raw output (the store serves it, ``view_store``)."""
        if self.neg_raw.numel() == 0:
            raise RuntimeError("CPL.forward_train needs negative images: call prepare_training() or set_negative_features()")
        o = self.options
        raw = encoded.float()
        f = F.normalize(raw, dim=-1)
        with torch.no_grad():
            ustar = self.target_mask(raw, labels)
        u = mupdate(ustar, self.u.float().t()[labels], o.mask_momentum)          # [B, E]
        v_cf = counterfactual(f, F.normalize(self.neg_raw[labels], dim=-1), u, o.cf_mix)
        text = self.instance_text_features(f)                                     # [B, C, D]
        logits = self.backbone.logit_scale.float() * torch.einsum("bd,bcd->bc", f, text)
        cl = torch.stack([contrastive_cf_loss(text[b], f[b], v_cf[b]) for b in range(f.shape[0])]).mean()
        terms = {"ce": F.cross_entropy(logits, labels), "cl": o.cl_weight * cl,
                 "mask": o.mask_weight * u.norm(dim=-1).mean()}
        return logits, terms
