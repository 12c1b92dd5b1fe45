"""KgCoOp against the OFFICIAL code's numbers (htyao89/KgCoOp c43ccc3; tests/golden/, see its
README): eval logits, every loss term and the gradients of every trainable tensor at 2 layers."""

from __future__ import annotations

import pytest

from golden_methods import check_against_official


@pytest.mark.parametrize("case_name", ["kgcoop_L2"])
def test_kgcoop_matches_official(case_name):
    check_against_official(case_name)
