"""Typed run configuration: per-method YAML defaults, ``--config`` files and ``--set`` overrides.

Resolution, later wins:
  TrainConfig defaults < ``configs/methods/<method>.yaml`` (train:, method:)
  < its ``protocols.<protocol>`` block < its ``shots.<k>`` block < its ``datasets.<name>`` block
  (and, inside it, ``protocols.<protocol>`` then ``shots.<k>``)
  < the settings an imported state was learned with (``imported``: ``cpbench run --from-export``)
  < ``--config FILE`` (same shape) < ``--set key=value`` (``epochs=1``, ``train.lr=0.01``,
  ``method.n_ctx=8``; a bare key is looked up in train first, then method options).

``dg`` jobs resolve as ``cross_dataset`` (DG evaluates the cross-dataset training; one checkpoint
serves both), so a ``protocols.dg`` block would never be read: none ships, and a ``--config`` file
with one is refused.

The config hash covers the method name, the resolved train settings and method options, so a
results row says exactly which hyperparameters produced it. Train settings added after results
were first written (``LATER_TRAIN``: the optimiser, schedule and iteration count the adapter and
LoRA baselines need) are left out of the resolved dict while at their defaults, so a configuration
that does not use them keeps its hash, its rows' ``config_json`` and its report entry.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cpbench.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs" / "methods"
PRECISIONS = ("fp16", "amp", "bf16", "fp32")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("epoch_cosine", "iter_cosine")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    precision: str = "fp16"
    test_batch_size: int = 100
    num_workers: int = 0
    grad_clip: float = 0.0
    checkpoint: bool = True
    # Opt-in approximation (off = paper-faithful): train on K cached augmented views of each
    # image's frozen features instead of fresh augmentations; only for unprompted-image methods.
    feature_views: int = 0
    # Optimiser and schedule. Defaults: Dassl's SGD (momentum, weight_decay above), warm-up epochs,
    # then cosine stepped per epoch (``epoch_cosine``), as every prompt method's official code.
    # Tip-Adapter-F and CLIP-LoRA: torch AdamW (betas, eps, weight_decay) and ``iter_cosine``:
    # CosineAnnealingLR stepped every iteration, T_max = all iterations, down to ``min_lr``, no
    # warm-up. ``iterations`` > 0 counts optimiser steps instead of epochs (CLIP-LoRA: 500 x
    # shots); the last epoch is then cut where the count is reached (``epochs`` must be 0).
    # ``iterations_per_shot`` > 0 (with ``iterations`` 0) sets iterations = it x the job's shots.
    optimizer: str = "sgd"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: str = "epoch_cosine"
    min_lr: float = 0.0
    iterations: int = 0
    iterations_per_shot: int = 0
    # Dassl drops the last incomplete batch (when the set has >= batch_size images); Tip-Adapter-F
    # and CLIP-LoRA's loaders keep it (drop_last=False)
    drop_last: bool = True
    # > 0: RandomResizedCrop's area range is (crop_scale_min, 1) instead of the backbone's (Dassl's
    # 0.08); Tip-Adapter's cache and -F training use 0.5. A backbone without a random crop (the toy)
    # keeps none.
    crop_scale_min: float = 0.0

    def validate(self) -> "TrainConfig":
        if self.epochs < 0:
            raise UserError("epochs must be >= 0")
        if self.batch_size < 1 or self.test_batch_size < 1:
            raise UserError("batch_size and test_batch_size must be >= 1")
        if self.lr <= 0:
            raise UserError("lr must be > 0")
        if self.feature_views < 0:
            raise UserError("feature_views must be >= 0 (0 = off)")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.iterations < 0 or self.iterations_per_shot < 0:
            raise UserError("iterations and iterations_per_shot must be >= 0 (0 = count epochs)")
        if self.iterations and self.epochs:
            raise UserError(f"set epochs or iterations, not both (epochs={self.epochs}, iterations={self.iterations}): "
                            "--set epochs=0 iterations=N counts iterations, --set iterations=0 iterations_per_shot=0 "
                            "epochs=N counts epochs")
        if self.iterations and self.schedule != "iter_cosine":
            raise UserError("iterations go with the per-iteration schedule: add --set schedule=iter_cosine")
        if self.schedule == "iter_cosine" and self.warmup_epochs:
            raise UserError("schedule=iter_cosine has no warm-up: set warmup_epochs=0")
        if not 0.0 <= self.crop_scale_min <= 1.0:
            raise UserError(f"crop_scale_min must be between 0 and 1 (0 = the backbone's crop), got {self.crop_scale_min}")
        return self

    def trains(self) -> bool:
        """Whether these settings train at all (some epochs or some iterations)."""
        return self.epochs > 0 or self.iterations > 0


# Train settings added after results were first written, with their defaults: left out of the
# resolved dict (hash, config_json) while at the default, so older configurations keep their hash.
LATER_TRAIN = ("optimizer", "adam_beta1", "adam_beta2", "adam_eps", "schedule", "min_lr", "iterations",
               "iterations_per_shot", "drop_last", "crop_scale_min")


def train_dict(train: TrainConfig) -> dict:
    """``asdict(train)`` without the ``LATER_TRAIN`` settings that are at their defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {k: v for k, v in asdict(train).items() if not (k in LATER_TRAIN and v == defaults[k])}


def _train_from_dict(d: dict) -> TrainConfig:
    from cpbench.methods.base import _coerce

    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"unknown train setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return TrainConfig(**{k: _coerce(v, known[k].type, f"train.{k}") for k, v in d.items()}).validate()


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config {path} is not valid YAML{where}; fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping with train:/method: sections")
    return data


def method_defaults(method: str) -> dict:
    path = CONFIG_DIR / f"{method}.yaml"
    return _read_yaml(path) if path.exists() else {}


def _merge(dst: dict, src: dict, where: str) -> None:
    for section in ("train", "method"):
        block = src.get(section)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise UserError(f"{where}: '{section}' must be a mapping")
        dst[section].update(block)


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"--set {item!r} is malformed; use --set key=value (e.g. --set epochs=1)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


@dataclass(frozen=True)
class ResolvedConfig:
    method: str
    train: TrainConfig
    options: Any  # the method's Options dataclass

    def as_dict(self) -> dict:
        return {"method": self.method, "train": train_dict(self.train), "options": asdict(self.options)}

    @classmethod
    def from_dict(cls, d: dict, options_cls: type) -> "ResolvedConfig":
        """The inverse of ``as_dict`` (a results row's ``config_json``, an export's ``config``)."""
        return cls(d["method"], _train_from_dict(dict(d["train"])), options_cls.from_dict(dict(d["options"])))

    @property
    def hash(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve(method: str, options_cls: type, protocol: str = "base2new", dataset: str | None = None,
            shots: int | None = None, config_file: str | Path | None = None,
            sets: list[str] | None = None, imported: dict | None = None) -> ResolvedConfig:
    base = method_defaults(method)
    merged: dict = {"train": {}, "method": {}}
    _merge(merged, base, f"{method}.yaml")
    blk = (base.get("protocols") or {}).get(protocol)
    if blk:
        _merge(merged, blk, f"{method}.yaml protocols.{protocol}")
    if shots is not None:
        sblk = (base.get("shots") or {}).get(shots) or (base.get("shots") or {}).get(str(shots))
        if sblk and protocol == "few_shot":
            _merge(merged, sblk, f"{method}.yaml shots.{shots}")
    if dataset is not None:
        dblk = (base.get("datasets") or {}).get(dataset)
        if dblk:
            _merge(merged, dblk, f"{method}.yaml datasets.{dataset}")
            pblk = (dblk.get("protocols") or {}).get(protocol)
            if pblk:
                _merge(merged, pblk, f"{method}.yaml datasets.{dataset}.protocols.{protocol}")
            dsblk = (dblk.get("shots") or {}).get(shots) or (dblk.get("shots") or {}).get(str(shots))
            if dsblk and protocol == "few_shot":  # as the top-level shots blocks: few-shot schedules
                _merge(merged, dsblk, f"{method}.yaml datasets.{dataset}.shots.{shots}")
    if imported:
        _merge(merged, imported, "the imported settings")
    if config_file:
        user = _read_yaml(Path(config_file))
        unknown = sorted(set(user) - {"train", "method", "protocols", "datasets", "shots"})
        if unknown:
            raise UserError(f"config {config_file}: unknown section(s) {', '.join(unknown)}; use train: and method:")
        if "dg" in (user.get("protocols") or {}):
            raise UserError(f"config {config_file}: protocols.dg is never read (dg evaluates the cross_dataset "
                            "training); put those settings under protocols.cross_dataset")
        _merge(merged, user, str(config_file))
        ublk = (user.get("protocols") or {}).get(protocol)
        if ublk:
            _merge(merged, ublk, f"{config_file} protocols.{protocol}")
        if dataset is not None:
            udb = (user.get("datasets") or {}).get(dataset)
            if udb:
                _merge(merged, udb, f"{config_file} datasets.{dataset}")
    train_keys = {f.name for f in fields(TrainConfig)}
    option_keys = {f.name for f in fields(options_cls)}
    for key, value in parse_set(sets or []):
        if key.startswith("train."):
            merged["train"][key[6:]] = value
        elif key.startswith("method."):
            merged["method"][key[7:]] = value
        elif key in train_keys:
            merged["train"][key] = value
        elif key in option_keys:
            merged["method"][key] = value
        else:
            valid = sorted(train_keys | option_keys)
            raise UserError(f"--set {key}: unknown setting for {method}; valid: {', '.join(valid)}")
    train = _train_from_dict(copy.deepcopy(merged["train"]))
    if train.iterations_per_shot and not train.iterations and shots:  # CLIP-LoRA: n_iters x shots
        train = replace(train, iterations=train.iterations_per_shot * shots).validate()
    options = options_cls.from_dict(merged["method"], f"{method} option")
    return ResolvedConfig(method, train, options)
