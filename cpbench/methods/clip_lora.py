"""CLIP-LoRA — low-rank adaptation of both encoders (Zanella & Ben Ayed, CVPRW'24; official
MaxZanella/CLIP-LoRA 358f0d7: ``lora.py`` ``run_lora`` / ``evaluate_lora``, ``loralib``
``apply_lora``, ``PlainMultiheadAttentionLoRA``, ``LinearLoRA``; ``run_utils.get_arguments``).

LoRA on the query, key and value projections (``params`` = "qkv"; "o" adds the output projection)
of every attention block (``position`` = all) of both towers (``encoder`` = both): for a block's
input x (after ``ln_1``),

  q = x·W_qᵀ + b_q + (dropout(x)·Aᵀ·Bᵀ)·α/√r        (and k, v alike, each with its own dropout)

with A ∈ R^{r×w} (kaiming-uniform, a = √5) and B ∈ R^{w×r} (zeros), r = 2, α = 1, dropout 0.25 on
the LoRA input in training only; note the scaling α/√r (``LoRALayer``), not LoRA's α/r. The
attention is ``F.scaled_dot_product_attention`` over the projections (as the official rebuilt MHA).
Training: text features of "a photo of a {}." (every dataset file of the repository overrides its
template with it: ``template``) through the LoRA text tower on every iteration, image features
through the LoRA image tower, logits = 100 · cos (the logit scale is hard-coded), CE; AdamW (lr
2e-4, weight decay 1e-2, betas (0.9, 0.999)), CosineAnnealingLR per iteration to 1e-6 over
500 × shots iterations (``n_iters`` x ``shots``; ``iterations`` per shots in ``clip_lora.yaml``),
batch 32, the last incomplete batch kept, fp16 autocast with a GradScaler on fp32 LoRA weights
(``amp``), Dassl's RandomResizedCrop (0.08, 1) + flip.

The backbone is never modified: the towers run through ``text_tower`` / ``image_tower`` here, which
read the frozen open_clip blocks' weights and add the low-rank terms to the activations; one
backbone serves every job of a run, and the official in-place merge W += B·A·α/√r at
``model.eval()`` (lossy when undone by ``train()``) is replaced by the same sum taken on the fly.

Checked against the official code: ``tests/golden/clip_lora_L2.json`` (12 LoRA layers of a 2+2-block
CLIP: logits, CE, the gradients of all 24 A/B tensors; its dropout was disabled for a deterministic
step, ``dropout_rate=0`` in the test).

Deviations:
- Evaluation returns 100 · cos; the official ``evaluate_lora`` takes the argmax of plain cosines
  (the same prediction; the stored probabilities are those of the training logits' scale).
- ``position`` names the official block index lists for 12-block towers (ViT-B/16, both towers;
  the text tower of every CLIP) and 24-block ones (ViT-L/14's image tower); other depths take
  ``all`` only.
- ``amp`` keeps the whole backbone in fp32 under autocast; the official model holds fp16 weights
  (and fp32 copies of the q/k/v/out weights, the fp16 values) under the same autocast: the matmuls
  run on the same fp16 values.

Protocols: few-shot only, which the paper and the code define (every dataset, ImageNet included);
base-to-new, cross-dataset and DG are refused (neither defines them: the LoRA text tower would
score new class names, but no official setting or number exists), and continual / retrieval too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options, clean
from cpbench.methods.prompts import template_features
from cpbench.models.text import _plain_block

LOGIT_SCALE = 100.0   # main.py: logit_scale = 100

# loralib/utils.py INDEX_POSITIONS_TEXT / INDEX_POSITIONS_VISION, by the tower's depth
POSITIONS = {
    12: {"top1": [11], "top2": [10, 11], "top": [11], "top3": [9, 10, 11], "bottom": [0, 1, 2, 3],
         "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11],
         "half-bottom": [0, 1, 2, 3, 4, 5]},
    24: {"half-up": list(range(12, 24)), "half-bottom": list(range(12))},
}
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}


@dataclass
class CLIPLoRAOptions(Options):
    r: int = 2
    alpha: float = 1.0
    dropout_rate: float = 0.25
    encoder: str = "both"           # text | vision | both
    params: str = "qkv"             # which of q, k, v, o get a LoRA
    position: str = "all"
    template: str = "a photo of a {}."   # empty = the dataset's template


class LoRA(nn.Module):
    """One projection's low-rank pair (official names ``w_lora_A`` [r, w], ``w_lora_B`` [w, r])."""

    def __init__(self, width: int, r: int):
        super().__init__()
        self.w_lora_A = nn.Parameter(torch.zeros(r, width))
        self.w_lora_B = nn.Parameter(torch.zeros(width, r))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, p: float, training: bool, scaling: float) -> torch.Tensor:
        x = F.dropout(x, p, training) if p > 0 else x
        return (x @ self.w_lora_A.to(x.dtype).t()) @ self.w_lora_B.to(x.dtype).t() * scaling


def _positions(name: str, depth: int, tower: str) -> list[int]:
    if name == "all":
        return list(range(depth))
    table = POSITIONS.get(depth, {})
    if name not in table:
        raise UserError(f"position {name!r} is not defined for the {depth}-block {tower} tower; use all"
                        + (f" or one of {', '.join(sorted(table))}" if table else ""))
    return table[name]


def lora_attention(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, lora: nn.ModuleDict,
                   p: float, training: bool, scaling: float) -> torch.Tensor:
    """The block's self-attention of ``x`` [B, T, D] with the low-rank terms added."""
    attn = block.attn
    h = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q = q + lora["q_proj"].delta(x, p, training, scaling) if "q_proj" in lora else q
    k = k + lora["k_proj"].delta(x, p, training, scaling) if "k_proj" in lora else k
    v = v + lora["v_proj"].delta(x, p, training, scaling) if "v_proj" in lora else v
    q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
    out = out.transpose(1, 2).flatten(-2)
    y = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    return y + lora["proj"].delta(out, p, training, scaling) if "proj" in lora else y


def run_blocks(blocks, x: torch.Tensor, mask, loras: nn.ModuleDict, p: float, training: bool, scaling: float):
    """open_clip's ResidualAttentionBlock forward, block by block, with LoRA where ``loras`` has one."""
    for i, block in enumerate(blocks):
        lora = loras[str(i)] if str(i) in loras else None
        if lora is None:
            x = block(x, attn_mask=mask)
            continue
        x = x + block.ls_1(lora_attention(block, block.ln_1(x), mask, lora, p, training, scaling))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


def lora_unsupported(backbone) -> str:
    """Why the towers cannot take this LoRA (the OpenAI-CLIP layout the official code patches:
    open_clip's CLIP ViT and a causal text transformer pooled at its end token, plain attention
    blocks), or ""."""
    t = backbone.text
    if t is None or not t.causal or t.pool not in ("argmax", "eos") or t.cls_emb is not None or t.pad_mask:
        return "this backbone's text tower is not a causal transformer pooled at its end token"
    if backbone.image.kind != "clip-vit":
        return "this backbone's image tower is not open_clip's CLIP ViT"
    blocks = list(t.transformer.resblocks) + list(backbone.clip.visual.transformer.resblocks)
    if not all(_plain_block(b) for b in blocks):
        return "its towers have blocks other than open_clip's plain ResidualAttentionBlock"
    return ""


class CLIPLoRA(Method):
    name = "clip_lora"
    Options = CLIPLoRAOptions
    image_prompted = True    # the image tower changes: no frozen-feature cache
    continual = False

    @classmethod
    def backbone_unsupported(cls, f, backbone: str = "this backbone") -> str:
        """From the model config, before loading (``models/families.py``): the official code patches
        CLIP's towers, a causal text transformer pooled at its end token and open_clip's ViT."""
        why = ""
        if f.text != "transformer" or not f.causal or f.pool not in ("argmax", "eos"):
            why = f"{backbone}'s text tower is a {f.text_words()} one"
        elif not f.image_prompts or f.image.startswith("timm"):
            why = f"{backbone}'s image tower is {f.image}"
        return (f"{cls.name} adds low-rank updates to the attention of CLIP's towers (a causal text transformer "
                f"pooled at its end token, open_clip's ViT), as the official code; {why}; use a backbone with CLIP's "
                "towers (see `cpbench list --backbones`)") if why else ""

    @classmethod
    def unsupported(cls, protocol, options):
        if protocol != "few_shot":
            return (f"{cls.name} runs --protocol few_shot only: CLIP-LoRA's paper and code define no {protocol} "
                    "setting (nor numbers to compare with)")
        return ""

    def __init__(self, backbone, classnames, options: CLIPLoRAOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        o = options
        if o.encoder not in ("text", "vision", "both"):
            raise UserError(f"encoder must be text, vision or both, got {o.encoder!r}")
        if not o.params or set(o.params) - set(PROJECTIONS):
            raise UserError(f"params must be letters of q, k, v, o (e.g. qkv), got {o.params!r}")
        if o.r < 1 or not 0.0 <= o.dropout_rate < 1.0:
            raise UserError("r must be >= 1 and dropout_rate in [0, 1)")
        why = lora_unsupported(backbone)
        if why:
            raise UserError(f"{self.name} puts LoRA into the q/k/v projections of CLIP's nn.MultiheadAttention blocks, as "
                            f"the official code: {why}")
        self.scaling = o.alpha / math.sqrt(o.r)   # LoRALayer: lora_alpha / sqrt(r)
        self.lora_text = self._towers(backbone.text.transformer.resblocks, "text", o.encoder in ("text", "both"))
        self.lora_visual = self._towers(backbone.clip.visual.transformer.resblocks, "vision",
                                        o.encoder in ("vision", "both"))
        self.register_buffer("frozen_text", torch.zeros(0), persistent=False)

    def _towers(self, blocks, tower: str, on: bool) -> nn.ModuleDict:
        out = nn.ModuleDict()
        if not on:
            return out
        for i in _positions(self.options.position, len(blocks), tower):
            width = blocks[i].attn.embed_dim
            out[str(i)] = nn.ModuleDict({PROJECTIONS[c]: LoRA(width, self.options.r) for c in "qkvo"
                                         if c in self.options.params})
        return out.to(self.backbone.dtype)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.frozen_text = torch.zeros(0, device=self.frozen_text.device)

    # ------------------------------------------------------------------ towers
    def text_tower(self, texts: list[str]) -> torch.Tensor:
        """``encode_text`` of ``texts`` with the text tower's LoRA (unnormalised features)."""
        bb = self.backbone
        enc = bb.text
        ids = bb.tokenize(texts)
        eot = bb.eot(ids)
        length = int(eot.max().item()) + 1          # causal: nothing after the last EOT reaches an EOT
        x = bb.token_embedding(ids[:, :length]).to(enc.dtype) + enc.positional_embedding[:length].to(enc.dtype)
        mask = enc.attn_mask[:length, :length]
        x = run_blocks(enc.transformer.resblocks, x, mask, self.lora_text, self.options.dropout_rate, self.training,
                       self.scaling)
        x = enc.ln_final(x)
        return enc._project(x[torch.arange(x.shape[0], device=x.device), eot])

    def image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """``encode_image`` with the image tower's LoRA (unnormalised features)."""
        v = self.backbone.clip.visual
        x = v.conv1(images.to(self.backbone.image.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = v.patch_dropout(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype))
        x = run_blocks(v.transformer.resblocks, v.ln_pre(x), None, self.lora_visual, self.options.dropout_rate,
                       self.training, self.scaling)
        if v.attn_pool is None and not v.final_ln_after_pool and v.pool_type == "tok":
            pooled = v.ln_post(x[:, 0])   # CLIP: the class token
        else:
            pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled

    # ------------------------------------------------------------------ features
    def _prompts(self) -> list[str]:
        t = self.options.template or self.template
        return [t.format(clean(c)) for c in self.classnames]

    def text_features(self) -> torch.Tensor:
        if len(self.lora_text):
            return self.text_tower(self._prompts())
        if self.frozen_text.numel() == 0:   # encoder=vision: the frozen classifier, computed once
            self.frozen_text = template_features(self.backbone, self.options.template or self.template, self.classnames)
        return self.frozen_text

    def encode_images(self, images):
        if len(self.lora_visual):
            return F.normalize(self.image_tower(images).float(), dim=-1)
        with torch.no_grad():
            return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def logits_from_features(self, image_features: torch.Tensor, context: Any) -> torch.Tensor:
        return LOGIT_SCALE * image_features.float() @ context.t()

    def forward_train(self, images, labels):
        logits = self.logits_from_features(self.encode_images(images), F.normalize(self.text_features().float(), dim=-1))
        return logits, {"ce": F.cross_entropy(logits, labels)}
