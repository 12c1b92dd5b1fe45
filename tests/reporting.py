"""For the report tests: results rows made by hand (the columns ``cpbench run`` writes, with the
configuration a run with these ``--set`` values would record; no training), jobs written with
their per-image predictions (``outcome_job``; toy-world-shaped ones: ``toy_like``), and an
in-process CLI call."""

from __future__ import annotations

import json
import zlib

import numpy as np

from cpbench.config import resolve
from cpbench.errors import UserError
from cpbench.methods.registry import get_method_class
from cpbench.protocols.registry import config_protocol


def config(method: str, protocol: str, dataset: str, shots: int, sets=()) -> tuple[str, str]:
    """(config_hash, config_json) as ``cpbench run`` records them; ("h", "") for an unknown method."""
    try:
        cls = get_method_class(method)
    except UserError:
        return "h", ""
    cfg = resolve(method, cls.Options, config_protocol(protocol), dataset=dataset, shots=shots,
                  sets=list(sets))
    return cfg.hash, json.dumps(cfg.as_dict(), sort_keys=True)


def row(protocol: str, method: str, train: str, eval_: str, subset: str, shots: int, seed: int, acc: float, *,
        backbone: str = "ViT-B-16", pretrained: str = "openai", weights: str = "", sets=(), imported: str = "",
        finished: str | None = None, **columns) -> dict:
    """One row; ``columns``: more columns as they are (``precision="fp16"``, ``cpbench_version=...``)."""
    h, js = config(method, protocol, train, shots, sets)
    return {"run_id": f"r{seed}", "job_key": "k", "method": method, "protocol": protocol, "train_dataset": train,
            "eval_dataset": eval_, "subset": subset, "shots": shots, "seed": seed, "backbone": backbone,
            "pretrained": pretrained, "weights": weights, "config_hash": h, "config_json": js, "accuracy": float(acc),
            "n_test": 100, "n_classes": 10, "imported": imported,
            "finished_at": finished or f"2026-01-{seed:02d}T00:00:00", **columns}


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


def outcome_job(root, method: str, dataset: str, seed: int, outcomes: dict, *, protocol: str = "base2new",
                train: str | None = None, shots: int = 16, write_predictions: bool = True, **kw) -> list[dict]:
    """One job written as ``cpbench run`` writes it: a shard of rows and the per-image predictions.
    ``outcomes``: ``{subset or eval dataset: (labels, preds)}`` (for base2new the keys are the
    subsets; for other protocols the evaluated datasets, subset ``all``). Base images are test-split
    positions 0..n-1, new ones follow."""
    from cpbench.results import predictions
    from cpbench.results.store import ResultStore

    train = train or dataset
    key = f"{method}-{protocol}-{train}-k{shots}-s{seed}-{'-'.join(f'{k}={v}' for k, v in sorted(kw.items()))}"
    run_id = f"{method[:4]}{seed}{zlib.crc32(key.encode()) % 10**6}"
    rows, evals, start = [], [], 0
    for target, (labels, preds) in outcomes.items():
        labels, preds = np.asarray(labels), np.asarray(preds)
        eval_, subset = (dataset, target) if protocol == "base2new" else (target, "all")
        acc = 100.0 * int(np.sum(labels == preds)) / len(labels)  # as cpbench run computes it
        r = row(protocol, method, train, eval_, subset, shots, seed, acc, **kw)
        n_classes = int(max(labels.max(), preds.max())) + 1
        r.update(run_id=run_id, job_key=key, correct=int(np.sum(labels == preds)), n_test=len(labels),
                 n_classes=n_classes)
        rows.append(r)
        index = np.arange(start, start + len(labels), dtype=np.int32) if protocol == "base2new" else \
            np.arange(len(labels), dtype=np.int32)
        start += len(labels)
        p_true = np.where(labels == preds, 0.9, 0.1).astype(np.float16)
        names = tuple(f"{target}-c{i}" for i in range(n_classes))
        evals.append(predictions.Evaluation(run_id, eval_, subset, predictions.Outcome(
            index, labels.astype(np.int16), preds.astype(np.int16), p_true, names)))
    if write_predictions:
        predictions.write(root, key, evals)
    ResultStore(root).write(key, rows)
    return rows


def outcomes_at(accuracy: float, n: int = 400, n_classes: int = 10, seed: int = 0, like=None, flip: float = 0.0):
    """(labels, preds) of ``n`` images (class-sorted labels) with about ``accuracy`` percent right:
    each image right with that probability (seeded). ``like`` = (labels, preds) to start from, with
    a share ``flip`` of its images redrawn at ``accuracy`` (correlated seeds/methods)."""
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    right = g.random(len(labels)) < accuracy / 100.0
    if like is not None:
        keep = g.random(len(labels)) >= flip
        right = np.where(keep, like[0] == like[1], right)
    wrong = (labels + 1 + g.integers(0, n_classes - 1, len(labels))) % n_classes
    return labels, np.where(right, labels, wrong)


# toy-world-shaped results (issue 20): zero-shot, CoOp, KgCoOp x the 4 toy datasets x 3 seeds, 400
# test images per half, CoOp ~13 points above zero-shot on toy_shapes base (as measured)
DATASETS = {"toy_shapes": (48.75, 64.0), "toy_colour_shapes": (86.0, 88.3), "toy_pattern_shapes": (52.1, 47.7),
            "toy_scenes": (37.1, 42.9)}
GAIN = {"coop": (13.0, -5.0), "kgcoop": (10.0, -2.0)}


def toy_zeroshot(d: str, subset: str):
    acc = DATASETS[d][subset == "new"]
    return outcomes_at(acc, seed=zlib.crc32(f"{d}/{subset}".encode()) % 1000)


def toy_like(root, methods=("zeroshot", "coop", "kgcoop"), seeds=(1, 2, 3), datasets=tuple(DATASETS)):
    for d in datasets:
        for s in seeds:
            for m in methods:
                outs = {}
                for i, subset in enumerate(("base", "new")):
                    zs = toy_zeroshot(d, subset)
                    if m == "zeroshot":
                        outs[subset] = zs
                    else:  # a learned method: half its images redrawn at zero-shot + gain, per seed
                        acc = DATASETS[d][i] + GAIN[m][i] + 3 * np.random.default_rng(s).standard_normal()
                        outs[subset] = outcomes_at(acc, seed=1000 * s + 7 * i + len(m), like=zs, flip=0.6)
                outcome_job(root, m, d, s, outs, backbone="toy")
    return root
