"""Zero-shot CLIP with the dataset's hand-written template (CoOp's ``ZeroshotCLIP``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpbench.methods.base import Method, Options, clean


@dataclass
class ZeroShotOptions(Options):
    template: str = ""  # empty: the dataset's own template


class ZeroShotCLIP(Method):
    name = "zeroshot"
    Options = ZeroShotOptions
    trainable = False
    seed_dependent = False  # no training data, no sampling: every seed gives the same result
    text_classifier = True
    retrieval = True  # the dataset's template around each caption ("{}": the caption itself)

    def prompts(self) -> list[str]:
        template = self.options.template or self.template
        return [template.format(clean(c)) for c in self.classnames]

    def text_features(self) -> torch.Tensor:
        return self.backbone.encode_text(self.prompts())
