"""Every golden case file has a golden test that names it, and every case a test names has its file
(the files live in tests/golden/, committed): a golden test can neither go untested nor be left
without its reference on a clean clone."""

from __future__ import annotations

import re
from pathlib import Path

from golden_utils import GOLDEN_DIR, golden_case_names, load_case

TESTS = Path(__file__).resolve().parent
CASE = re.compile(r"[\"']([a-z][a-z0-9_]*_L\d+)[\"']")   # a case name as the tests write it: "coop_L2"


def _golden_test_sources() -> str:
    files = sorted(TESTS.glob("test_golden_*.py")) + [TESTS / "test_official_checkpoints.py"]
    skip = ("test_golden_coverage.py", "test_golden_weights.py")
    return "\n".join(p.read_text() for p in files if p.name not in skip)


def test_every_golden_case_has_a_test():
    sources = _golden_test_sources()
    names = golden_case_names()
    assert len(names) >= 12
    missing = [n for n in names if not re.search(rf"[\"']{re.escape(n)}[\"']", sources)]
    assert not missing, f"golden files without a test: {missing}"


def test_every_case_a_test_names_has_its_file():
    named = sorted(set(CASE.findall(_golden_test_sources())))
    assert len(named) >= 12
    lacking = [n for n in named if not (GOLDEN_DIR / f"{n}.json").is_file()]
    assert not lacking, f"golden tests name cases whose file is missing from tests/golden/: {lacking}"


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
