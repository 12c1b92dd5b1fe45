"""Every golden case file has a golden test that names it, and no golden test can skip for a
missing file on a clean clone (the files live in tests/golden/, committed)."""

from __future__ import annotations

import re
from pathlib import Path

from golden_utils import golden_case_names, load_case

TESTS = Path(__file__).resolve().parent


def test_every_golden_case_has_a_test():
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_golden_*.py")
                        if p.name not in ("test_golden_coverage.py", "test_golden_weights.py"))
    names = golden_case_names()
    assert len(names) >= 12
    missing = [n for n in names if not re.search(rf"[\"']{re.escape(n)}[\"']", sources)]
    assert not missing, f"golden files without a test: {missing}"


def test_golden_cases_are_complete():
    for name in golden_case_names():
        case = load_case(name)
        assert case["eval"]["logits"], name
        assert [t["name"] for t in case.trainable] == list(case["grads"]), name
        train = case["train"]
        if train is None:  # a training-free method (Tip-Adapter): nothing trainable, no step
            assert case.trainable == [] and case["grads"] == {}, name
            continue
        assert train["loss_calls"], name
        if train["total_reported"] is None:  # no scalar total (ProGrad's projected step): say how instead
            assert train["total_reassembled"] is None and train["formula"], name
            continue
        assert abs(train["total_reported"] - train["total_reassembled"]) <= 1e-6 * max(
            1.0, abs(train["total_reported"])), name
        w = case.weights
        assert {"vision_layers", "text_layers", "image_size", "base_seed", "sha256"} <= set(w), name
        assert {"image_seed", "labels", "classnames", "learnable_seed_base", "rng_seed_before_each_forward"} \
            <= set(case["inputs"]), name
