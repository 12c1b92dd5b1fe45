"""KgCoOp — knowledge-guided context optimisation (Yao et al., CVPR'23; official htyao89/KgCoOp
KgCoOp/trainers/kgcoop.py).

CoOp with 4 context tokens from "a photo of a" (class token at the end; only ``ctx`` is
trainable, as the official rule ``"ctx" in name``) plus the knowledge-guided term
``kg`` = λ · (1 − mean_c cos(t_c, t_c^clip)), λ = 8 (``TRAINER.COOP.W`` in scripts/run.sh),
``nn.CosineSimilarity(dim=1, eps=1e-7)``. t_c are the normalised learned-prompt text features and
t_c^clip the normalised frozen CLIP features of the hand-crafted prompt of the training dataset
(``template``: empty = the dataset's template; the official ``CUSTOM_TEMPLATES`` equal CoOp's
except DTD, "a photo of a {}, a type of texture.", set in kgcoop.yaml). The teacher is computed
once per class set, on first use in training (non-persistent buffer). The official teacher is
encoded by the fp16 CLIP; here it comes from the backbone in the run's precision (fp16 runs match,
fp32 runs get an fp32 teacher; the golden test compares in fp32).
Config ``vit_b16_ep100_ctxv1``: 100 epochs, batch 128, lr 0.002.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.prompts import TemplateTeacher


@dataclass
class KgCoOpOptions(CoOpOptions):
    kg_weight: float = 8.0
    template: str = ""  # hand-crafted prompt of the teacher; empty = the dataset's template


class KgCoOp(TemplateTeacher, CoOp):
    name = "kgcoop"
    Options = KgCoOpOptions

    def __init__(self, backbone, classnames, options: KgCoOpOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        self.register_buffer("teacher", torch.zeros(0), persistent=False)

    def _terms(self, logits, text, labels):
        score = 1.0 - F.cosine_similarity(text, self.teacher_features(), dim=1, eps=1e-7).mean()
        return {"ce": F.cross_entropy(logits, labels), "kg": self.options.kg_weight * score}

    def forward_train(self, images, labels):
        text = F.normalize(self.text_features().float(), dim=-1)
        logits = self.logits_from_features(self.encode_images(images), text)
        return logits, self._terms(logits, text, labels)

    def forward_train_features(self, features, labels):
        text = F.normalize(self.text_features().float(), dim=-1)
        logits = self.logits_from_features(features, text)
        return logits, self._terms(logits, text, labels)
