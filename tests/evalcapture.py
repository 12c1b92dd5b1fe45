"""Record the logits ``cpbench run``'s evaluation computes, without changing it: the evaluate()
that execute.py calls is wrapped so each call's scorer records what its own
``logits_from_features`` returns, per target, in order."""

from __future__ import annotations

import torch

from cpbench.protocols import execute


def capture_evaluations(monkeypatch) -> list[dict]:
    """After a run: one entry per evaluation, {"items", "logits" [N, C], "accuracy"}."""
    got: list[dict] = []
    real = execute.evaluate

    def recording(scorer, items, *args, **kwargs):
        parts = []
        original = scorer.logits_from_features

        def record(features, context):
            out = original(features, context)
            parts.append(out.detach().float().cpu())
            return out

        scorer.logits_from_features = record  # instance attribute: shadows the method for this call
        try:
            res = real(scorer, items, *args, **kwargs)
        finally:
            del scorer.logits_from_features
        got.append({"items": list(items), "logits": torch.cat(parts), "accuracy": res.accuracy})
        return res

    monkeypatch.setattr(execute, "evaluate", recording)
    return got
