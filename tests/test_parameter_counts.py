"""The learnable parameter counts at ViT-B/16 that the papers state."""

from __future__ import annotations

from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions
from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.ivlp import IVLP, IVLPOptions
from cpbench.methods.kgcoop import KgCoOp, KgCoOpOptions
from cpbench.methods.maple import MaPLe, MaPLeOptions
from cpbench.methods.promptsrc import PromptSRC, PromptSRCOptions
from methodutils import NAMES


def test_trainable_parameter_counts_at_vit_b16():
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("ViT-B-16", "none")     # architecture only: random weights, no download
    names = NAMES[:2]
    counts = {
        "coop": CoOp(bb, names, CoOpOptions(ctx_init="a photo of a")).n_learnable(),
        "cocoop": CoCoOp(bb, names, CoCoOpOptions()).n_learnable(),
        "maple": MaPLe(bb, names, MaPLeOptions()).n_learnable(),
        "ivlp": IVLP(bb, names, IVLPOptions()).n_learnable(),
        "promptsrc": PromptSRC(bb, names, PromptSRCOptions()).n_learnable(),
        "kgcoop": KgCoOp(bb, names, KgCoOpOptions()).n_learnable(),
    }
    assert counts == {"coop": 2048, "cocoop": 2048 + 16416 + 16896, "maple": 3_555_072, "ivlp": 46_080,
                      "promptsrc": 46_080, "kgcoop": 2048}
    assert round(counts["cocoop"] / 1000, 1) == 35.4 and 3.55e6 <= counts["maple"] < 3.56e6   # ≈ 35.4K, ≈ 3.55M
