"""PromptSRC against the OFFICIAL code's numbers (PromptSRC bb95c77; tests/golden/, see its README):
eval logits, every loss term and the gradients of every trainable tensor at 2 layers and 9 layers
(deep prompts, depth 9)."""

from __future__ import annotations

import pytest

from golden_methods import check_against_official


@pytest.mark.parametrize("case_name", ["promptsrc_L2", "promptsrc_L9"])
def test_promptsrc_matches_official(case_name):
    check_against_official(case_name)
