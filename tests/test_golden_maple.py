"""MaPLe against the OFFICIAL code's numbers (multimodal-prompt-learning 69bce21; tests/golden/, see
its README): eval logits, every loss term and the gradients of every trainable tensor at 2 layers
and 9 layers (deep prompts, depth 9)."""

from __future__ import annotations

import pytest

from golden_methods import check_against_official


@pytest.mark.parametrize("case_name", ["maple_L2", "maple_L9"])
def test_maple_matches_official(case_name):
    check_against_official(case_name)
