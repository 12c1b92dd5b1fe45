"""For the report tests: results rows made by hand (the columns ``cpbench run`` writes, with the
configuration a run with these ``--set`` values would record; no training) and an in-process
CLI call."""

from __future__ import annotations

import json


from cpbench.config import resolve
from cpbench.errors import UserError
from cpbench.methods.registry import get_method_class
from cpbench.protocols.jobs import CONFIG_PROTOCOL


def config(method: str, protocol: str, dataset: str, shots: int, sets=()) -> tuple[str, str]:
    """(config_hash, config_json) as ``cpbench run`` records them; ("h", "") for an unknown method."""
    try:
        cls = get_method_class(method)
    except UserError:
        return "h", ""
    cfg = resolve(method, cls.Options, CONFIG_PROTOCOL.get(protocol, protocol), dataset=dataset, shots=shots,
                  sets=list(sets))
    return cfg.hash, json.dumps(cfg.as_dict(), sort_keys=True)


def row(protocol: str, method: str, train: str, eval_: str, subset: str, shots: int, seed: int, acc: float, *,
        backbone: str = "ViT-B-16", pretrained: str = "openai", weights: str = "", sets=(), imported: str = "",
        finished: str | None = None) -> dict:
    h, js = config(method, protocol, train, shots, sets)
    return {"run_id": f"r{seed}", "job_key": "k", "method": method, "protocol": protocol, "train_dataset": train,
            "eval_dataset": eval_, "subset": subset, "shots": shots, "seed": seed, "backbone": backbone,
            "pretrained": pretrained, "weights": weights, "config_hash": h, "config_json": js, "accuracy": float(acc),
            "n_test": 100, "n_classes": 10, "imported": imported,
            "finished_at": finished or f"2026-01-{seed:02d}T00:00:00"}


def b2n(method: str, dataset: str, base: list[float], new: list[float], **kw) -> list[dict]:
    """16-shot base and new rows of one dataset, seeds 1, 2, … (``seeds=`` to choose them)."""
    seeds = kw.pop("seeds", None) or list(range(1, len(base) + 1))
    return ([row("base2new", method, dataset, dataset, "base", 16, s, a, **kw) for s, a in zip(seeds, base)]
            + [row("base2new", method, dataset, dataset, "new", 16, s, a, **kw) for s, a in zip(seeds, new)])


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``cpbench ARGS`` in this process: (exit code, stdout, stderr)."""
    from conftest import run_main

    capsys.readouterr()
    code = run_main(monkeypatch, *args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
