"""PromptSRC — self-regulating prompts (Khattak et al., ICCV'23; official muzairkhattak/PromptSRC
trainers/promptsrc.py; methods.md §3.1).

Architecture: IVLP (4 text + 4 vision tokens, depth 9/9; see ``ivlp.py``). Training loss terms
(weighted, as ``forward_backward``):
- ``ce``: CE(z, y) of the prompted logits;
- ``text``: 25 · L1_mean(normalised prompted text features [C, D], normalised teacher g̃);
- ``image``: 10 · L1_mean(normalised prompted image features, normalised frozen image features);
- ``kl``: KL(softmax z̃ ‖ softmax z) summed over batch and classes, / z.numel() (temperature 1),
  with z̃ = logit_scale · frozen image features · normalised g̃ᵀ.
The teacher g̃_c is the mean over the 60 generic templates (``TEMPLATES``, the official
``IMAGENET_TEMPLATES`` order) of the UNNORMALISED frozen CLIP text features; it is computed once
per class set, on first use in training (non-persistent buffer; new-class evaluation never needs
it), with an fp32 text tower as the official code (a float copy when the backbone is fp16). The frozen image features come from the same backbone without prompts, under no_grad.

Gaussian prompt aggregation (GPA): w_e ∝ N(e; μ, σ²) for epochs e = 1..E, normalised to sum 1
(computed as a softmax of the log-pdf, equal to pdf/Σpdf and safe from underflow); after each
epoch θ_GPA += w_e · θ_e (persistent ``gpa_*`` buffers, so a resumed run continues the sum);
at train end θ_GPA is loaded into the prompts. Only the learned prompts are aggregated. The
official code weights and sums the WHOLE state_dict, frozen CLIP included, and loads the result:
in fp32 that part sums back to itself up to round-off, but in the official fp16 it does not —
each Σ_e w_e·θ is computed with an fp16 rounding per product and per sum, and a simulation of
that arithmetic (E = 20, μ = 15, σ = 1, 10⁶ random fp16 values at three scales) changes about
38 % of the values, by up to 3 ulps (the audit measured ~40–60 % by one ulp). So the official
model evaluated after training (and the frozen weights inside its released checkpoints) differs
from the pretrained CLIP by those ulps; cpbench keeps the pretrained backbone untouched, and an
imported official checkpoint (``cpbench/state/official.py``) takes only its prompts.
Inference: plain prompted CLIP (IVLP) with the aggregated prompts.

Issue 18 audit item (9), the claim that GPA over the frozen weights sums back to itself:
corrected (above).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from cpbench.methods.base import clean
from cpbench.methods.ivlp import IVLP, IVLPOptions

# PromptSRC trainers/imagenet_templates.py IMAGENET_TEMPLATES (bb95c77), in its order: CLIP's 80
# ImageNet templates without the last 20, with "a photo of a {}." moved to the front.
TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)


@dataclass
class PromptSRCOptions(IVLPOptions):
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    gpa: bool = True


def gpa_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """w_e = N(e; mean, std²) / Σ_e' N(e'; mean, std²) for e = 1..epochs (float64)."""
    if std <= 0:
        raise UserError("gpa_std must be > 0")
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-0.5 * ((e - mean) / std) ** 2, dim=0)


def src_losses(logits, text, teacher, image, frozen_image, logit_scale, text_weight, image_weight):
    """The three self-regulating terms on given tensors (all features L2-normalised):
    {"text": w_t·L1(text, teacher), "image": w_v·L1(image, frozen_image), "kl": KL(zs‖p)/numel}."""
    zs_logits = logit_scale * frozen_image @ teacher.t()
    kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                  log_target=True) / logits.numel()
    return {"text": text_weight * F.l1_loss(text, teacher, reduction="mean"),
            "image": image_weight * F.l1_loss(image, frozen_image, reduction="mean"),
            "kl": kl}


class PromptSRC(IVLP):
    name = "promptsrc"
    Options = PromptSRCOptions
    fp32_prefixes = ("VPT", "deep_text", "deep_vision", "gpa_VPT", "gpa_deep_text", "gpa_deep_vision")

    def __init__(self, backbone, classnames, options: PromptSRCOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        self._gpa_names = [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        for n in self._gpa_names:
            self.register_buffer(self._acc(n), torch.zeros_like(self.get_parameter(n).data))
        self.register_buffer("fixed_embeddings", torch.zeros(0), persistent=False)

    @staticmethod
    def _acc(name: str) -> str:
        return "gpa_" + name.replace(".", "_")

    # ------------------------------------------------------------------ teacher
    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.fixed_embeddings = torch.zeros(0, device=self.ctx.device)  # rebuilt on first training use

    @torch.no_grad()
    def teacher_text_features(self) -> torch.Tensor:
        """Mean over the 60 templates of the unnormalised frozen text features, [C, E] float."""
        if self.fixed_embeddings.numel() == 0:
            bb = self.backbone
            # fp32 text tower as the official teacher (``load_clip_to_cpu(cfg, True).float()``) even
            # when the backbone runs in fp16: a float copy of the (fp16-exact) weights
            enc = bb.text if bb.text.dtype == torch.float32 else copy.deepcopy(bb.text).float()
            names = [clean(c) for c in self.classnames]
            total = None
            for t in TEMPLATES:
                ids = bb.tokenize([t.replace("{}", n) for n in names])
                f = bb.encode_ids(ids, enc, torch.float32).float()
                total = f if total is None else total + f
            self.fixed_embeddings = total / len(TEMPLATES)
        return self.fixed_embeddings

    # ------------------------------------------------------------------ training
    def forward_train(self, images, labels):
        o = self.options
        text = F.normalize(self.text_features().float(), dim=-1)
        image = F.normalize(self.image_features(images).float(), dim=-1)
        scale = self.backbone.logit_scale.float()
        logits = scale * image @ text.t()
        teacher = F.normalize(self.teacher_text_features(), dim=-1)
        with torch.no_grad():
            frozen = F.normalize(self.backbone.encode_image(images).float(), dim=-1)
        terms = {"ce": F.cross_entropy(logits, labels)}
        terms.update(src_losses(logits, text, teacher, image, frozen, scale, o.text_loss_weight, o.image_loss_weight))
        return logits, terms

    # ------------------------------------------------------------------ GPA
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        if not self.options.gpa:
            return
        w = float(gpa_weights(epochs, self.options.gpa_mean, self.options.gpa_std)[epoch])
        with torch.no_grad():
            for n in self._gpa_names:
                acc = self.get_buffer(self._acc(n))
                acc.add_(w * self.get_parameter(n).detach().to(acc.dtype))

    def on_train_end(self) -> None:
        if not self.options.gpa:
            return
        with torch.no_grad():
            for n in self._gpa_names:
                p = self.get_parameter(n)
                p.copy_(self.get_buffer(self._acc(n)).to(p.dtype))
