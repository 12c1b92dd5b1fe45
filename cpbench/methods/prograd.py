"""ProGrad — prompt-aligned gradient (Zhu et al., ICCV'23; official BeierZhu/Prompt-align
1b76203, ``ProGrad.public/trainers/prograd.py`` and ``prograd_backward_and_update`` in the Dassl
fork vendored beside it, ``Dassl.ProGrad.pytorch/dassl/engine/trainer.py``).

Architecture: CoOp (``coop.py``) with N_CTX = 16 and ``CTX_INIT=True``, which in this repository
means: the init phrase is the training dataset's ProGrad template (``CUSTOM_TEMPLATES``, e.g.
"a type of pet, a photo of a {}." for OxfordPets) minus " {}."; the context is zeros(16, D) with
its last p rows set to the embeddings of the phrase's first p tokens (p = its number of words), and
the prompt is "X" x (16 - p), the phrase, the class name and "." (the context replaces tokens
1..16). The templates are set per dataset in ``prograd.yaml`` (``template``; they differ from
CoOp's); ``init_from_template=false`` gives CoOp's random N(0, 0.02²) context, ``ctx_init`` another
phrase.

Training terms (``ProGradLoss``, T = ``temperature`` = 1): ``ce`` = CE(z, y) and ``kl`` =
mean_b Σ_c −softmax(z̃/T)·log_softmax(z/T)·T² — a soft-target cross-entropy against the
zero-shot logits z̃ = logit_scale · f · t̃ᵀ (t̃: normalised frozen text features of the template),
not ``F.kl_div``. There is no scalar total: ``backward`` takes g_kl = ∇kl and g_ce = ∇ce per
parameter and, when cos(g_ce, g_kl) < 0, sets grad = g_ce − λ·(g_ce·ĝ_kl)·ĝ_kl (ĝ = g/‖g‖),
else grad = g_ce; λ = ``prograd_lambda`` (``LOSS.LAMBDA``: 1.0; the README: 0.8 for 8 and 16
shots on Flowers102, DTD and EuroSAT). With the fp16 loss scaler both gradients carry the same
scale; the projection is linear in g_ce and uses only the direction of g_kl, so it commutes with
it. The reported training loss is ce + kl (a display only; nothing is stepped on it).

Checked against the official code: the golden case ``tests/golden/prograd_L2.json`` (logits,
both terms, the final gradient and each component; its projection is not applied, cos = +0.27)
and a hand-made case with cos < 0 (``tests/test_prograd.py``). Configs (``prograd.yaml``):
``configs/trainers/ProGrad/rn50{,_ep50,_ep100}.yaml`` (SGD lr 0.002, batch 32, warm-up 1 epoch at
1e-5, cosine), ``scripts/prograd.sh`` / ``base2new_train_prograd.sh`` and the README (epochs per
shots: 1 → 50, 2/4 → 100, 8/16 → 200; base-to-new rn50_ep100; ImageNet 50).

Deviations:
- The teacher's image features are the student's: both come from the same frozen, unprompted
  image encoder, so the official second forward through ``zs_clip`` is skipped. The official
  teacher is a separate float32 CLIP (``CLIP.__init__`` floats its copy); here it runs in the
  run's precision (fp16 runs: the teacher's image and text features are fp16 rather than fp32;
  fp32 runs, which the golden test uses, are identical). The teacher text features are computed
  once per class set (non-persistent buffer), as the official ``CLIP`` computes them once.
- A template whose class slot is not " {}." at its end (cpbench's dataset templates such as
  "a photo of a {}, a type of pet.") contributes the words before "{}"; the official
  ``replace(" {}.", "")`` would keep the rest of the template in the phrase. ProGrad's own
  templates (``prograd.yaml``) all end in " {}.", where both rules agree.
- With ``csc`` and an init phrase the official code silently makes one shared context; here each
  class gets its own copy of the initialised context (what ``csc`` asks for). The official
  scripts never set CSC.
- The official ``amp`` branch passes the loss tuple to the scaler and crashes; fp16 (the default
  ``PREC``) and fp32 are the official paths, and ``amp`` here runs the same projection.
- The official scripts train base-to-new with SHOTS=4 (``base2new_train_prograd.sh``); the
  published base-to-new tables (and cpbench's protocol) use 16 shots (``--shots``).

Protocols: base-to-new, few-shot, cross-dataset and DG (the paper / README; prompts are rebuilt
from any class names), continual (a shared context, as CoOp). Not retrieval: the paper defines no
retrieval, and its teacher needs a hand-crafted template around a class name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method
from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.prompts import ClassPrompts, TemplateTeacher, init_context


@dataclass
class ProGradOptions(CoOpOptions):
    n_ctx: int = 16
    ctx_init: str = ""                 # an explicit init phrase (else the template's, see below)
    init_from_template: bool = True    # CTX_INIT=True: the phrase is the template minus " {}."
    template: str = ""                 # ProGrad's hand-crafted prompt; empty = the dataset's template
    prograd_lambda: float = 1.0        # LOSS.LAMBDA
    temperature: float = 1.0           # LOSS.T


def prograd_losses(logits: torch.Tensor, zs_logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict:
    """``ProGradLoss``: {"ce": CE(z, y), "kl": mean_b Σ_c −softmax(z̃/T) log_softmax(z/T) T²}."""
    soft = F.softmax(zs_logits / t, dim=-1)
    kl = (-soft * F.log_softmax(logits / t, dim=-1) * t * t).sum(1).mean()
    return {"ce": F.cross_entropy(logits, labels), "kl": kl}


def prograd_project(g_ce: torch.Tensor, g_kl: torch.Tensor, lam: float) -> torch.Tensor:
    """``prograd_backward_and_update`` for one parameter: g_ce − λ·(g_ce·ĝ_kl)·ĝ_kl when the two
    gradients conflict (cosine < 0), else g_ce. A zero g_kl makes the cosine NaN: no projection."""
    b_hat = g_kl / torch.linalg.norm(g_kl)
    a_hat = g_ce / torch.linalg.norm(g_ce)
    if torch.dot(a_hat.flatten(), b_hat.flatten()) < 0:
        return g_ce - lam * torch.dot(g_ce.flatten(), b_hat.flatten()) * b_hat
    return g_ce


def init_phrase(options: ProGradOptions, template: str) -> str:
    """The words the context starts from: ``ctx_init``, or the template's words before its class
    slot (``init_from_template``), or "" (random context)."""
    if options.ctx_init:
        return options.ctx_init.replace("_", " ").strip()
    if not options.init_from_template:
        return ""
    t = options.template or template
    phrase = t.split("{}")[0].replace("_", " ").strip()
    if not phrase:
        raise UserError(f"ProGrad's context starts from the words before the class name in its template, and "
                        f"{t!r} has none; set --set method.template='a photo of a {{}}.' or init_from_template=false")
    return phrase


class ProGrad(TemplateTeacher, CoOp):
    name = "prograd"
    Options = ProGradOptions
    retrieval = False

    @classmethod
    def unsupported(cls, protocol, options):
        if protocol == "retrieval":
            return (f"{cls.name} has no image-text retrieval mode: its paper defines none, and its zero-shot teacher "
                    "is a hand-crafted template around a class name; use zeroshot, coop, cocoop or cpl")
        return super().unsupported(protocol, options)

    def __init__(self, backbone, classnames, options: ProGradOptions, template="a photo of a {}."):
        Method.__init__(self, backbone, classnames, options, template)
        if options.class_token_position not in ("end", "middle", "front"):
            raise UserError("class_token_position must be end, middle or front")
        n_ctx = options.n_ctx
        phrase = init_phrase(options, template)
        if phrase:
            p = len(phrase.split(" "))
            if n_ctx < p:
                raise UserError(f"n_ctx ({n_ctx}) must be at least the number of words of the init phrase "
                                f"{phrase!r} ({p})")
            ctx = torch.zeros(n_ctx, backbone.text_width)
            ctx[n_ctx - p:] = init_context(backbone, phrase, p)
            prefix = " ".join(["X"] * (n_ctx - p) + [phrase])
        else:
            ctx = init_context(backbone, "", n_ctx)
            prefix = " ".join(["X"] * n_ctx)
        if options.csc:
            ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(backbone.dtype))
        self.prompts = ClassPrompts(backbone, classnames, prefix, n_ctx)
        self.register_buffer("teacher", torch.zeros(0), persistent=False)

    def _step(self, features: torch.Tensor, labels: torch.Tensor):
        text = F.normalize(self.text_features().float(), dim=-1)
        scale = self.backbone.logit_scale.float()
        logits = scale * features.float() @ text.t()
        with torch.no_grad():
            zs = scale * features.float() @ self.teacher_features().t()
        return logits, prograd_losses(logits, zs, labels, self.options.temperature)

    def forward_train(self, images, labels):
        return self._step(self.encode_images(images), labels)

    def forward_train_features(self, features, labels):
        return self._step(features, labels)

    def backward(self, losses, scale):
        """g_kl, then g_ce into ``.grad``, then the projection of each parameter's gradient."""
        params = [p for p in self.parameters() if p.requires_grad]
        g_kl = torch.autograd.grad(scale(losses["kl"]), params, retain_graph=True, allow_unused=True)
        scale(losses["ce"]).backward()
        with torch.no_grad():
            for p, g in zip(params, g_kl):
                if p.grad is not None and g is not None:
                    p.grad = prograd_project(p.grad, g, self.options.prograd_lambda)
