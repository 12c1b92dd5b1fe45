"""Typed run configuration: per-method YAML defaults, ``--config`` files and ``--set`` overrides.

A config file (``configs/methods/<method>.yaml`` as shipped, or ``--config FILE``) holds ``train:``
(``TrainConfig``) and ``method:`` (the method's ``Options``) settings, at the top and in blocks that
apply to some jobs only::

    train: {...}                      method: {...}
    protocols:  <protocol>: {train, method, shots: {<k>: {train, method}}}
    shots:      <k>: {train, method}                    # every protocol run with k shots
    datasets:   <dataset>: {train, method, protocols: {...}, shots: {...}}   # the same, for one dataset

Resolution, later wins:
  TrainConfig defaults
  < the method's YAML: train/method < protocols.<p> < protocols.<p>.shots.<k> < shots.<k>
    < datasets.<d> (inside it the same order: train/method < protocols.<p> < protocols.<p>.shots.<k>
      < shots.<k>)
  < the settings an imported state was learned with (``imported``: ``cpbench run --from-export``)
  < ``--config FILE``, the same layering inside it
  < ``--set key=value`` (``epochs=1``, ``train.lr=0.01``, ``method.n_ctx=8``; a bare key is looked
    up in train first, then method options).

Every block above is read from both files; anything else in a file (an unknown section, block,
protocol, shot count or setting) is refused in one line, wherever it stands, so a setting is never
silently ignored. ``dg`` jobs resolve as ``cross_dataset`` (DG evaluates the cross-dataset
training; one checkpoint serves both; ``protocols/registry.py``), so a ``protocols.dg`` block would
never be read: none ships, and one in a file is refused.

The config hash covers the method name, the resolved train settings and method options, so a
results row says exactly which hyperparameters produced it. Train settings added after results
were first written (``LATER_TRAIN``: the optimiser, schedule and iteration count the adapter and
LoRA baselines need) are left out of the resolved dict while at their defaults, so a configuration
that does not use them keeps its hash, its rows' ``config_json`` and its report entry.
"""

from __future__ import annotations

import copy
import functools
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


def coerce(value: Any, typ: Any, where: str) -> Any:
    """``value`` as the dataclass field type ``typ`` (int, float, bool, str; YAML and ``--set`` give
    strings and numbers), or one line naming ``where`` and the type."""
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t in ("int",):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t in ("float",):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t in ("bool",):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if t in ("str",):
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {t}, got {value!r}") from None
    return value


def _train_from_dict(d: dict) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"unknown train setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return TrainConfig(**{k: coerce(v, known[k].type, f"train.{k}") for k, v in d.items()}).validate()


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
    """The method's shipped config file (``configs/methods/<method>.yaml``; {} if it has none)."""
    return copy.deepcopy(_shipped(method))


@functools.lru_cache(maxsize=None)
def _shipped(method: str) -> dict:  # read once per process: resolving is per job (and per report cell)
    path = CONFIG_DIR / f"{method}.yaml"
    return _read_yaml(path) if path.exists() else {}


SETTINGS = ("train", "method")
# the blocks each block of a config file may hold
SECTIONS = ("train", "method", "protocols", "shots", "datasets")
PROTOCOL_BLOCK = ("train", "method", "shots")
DATASET_BLOCK = ("train", "method", "protocols", "shots")


def _merge(dst: dict, src: dict) -> None:
    for section in SETTINGS:
        dst[section].update(src.get(section) or {})


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping")
    return value


def _shots_key(key, where: str) -> int:
    k = key if isinstance(key, int) and not isinstance(key, bool) else int(key) if str(key).isdigit() else 0
    if k < 1:
        raise UserError(f"{where}: {key!r} is not a shot count; use a positive integer such as 16")
    return k


def _check_block(block, where: str, allowed: tuple[str, ...], options_cls: type) -> dict:
    """``block`` is a mapping of ``allowed`` sections whose train/method settings exist."""
    block = _mapping(block, where)
    unknown = [str(k) for k in block if k not in allowed]
    if unknown:
        raise UserError(f"{where}: unknown section(s) {', '.join(unknown)}; use {', '.join(allowed)}")
    for section, known, what in (("train", {f.name for f in fields(TrainConfig)}, "train setting(s)"),
                                 ("method", {f.name for f in fields(options_cls)}, "method option(s)")):
        bad = sorted(str(k) for k in _mapping(block.get(section), f"{where} {section}") if k not in known)
        if bad:
            raise UserError(f"{where} {section}: unknown {what} {', '.join(bad)}; valid: {', '.join(sorted(known))}")
    return block


def _join(*path: str) -> str:
    return ".".join(p for p in path if p)


def _at(file: str, *path: str) -> str:
    """Where a block stands, for messages: ``config my.yaml datasets.dtd.protocols.few_shot``."""
    inside = _join(*path)
    return f"{file} {inside}" if inside else file


def _protocol_blocks(parent: dict, file: str, path: str) -> dict:
    from cpbench.protocols.registry import check_protocol_name, config_protocol

    blocks = _mapping(parent.get("protocols"), _at(file, path, "protocols"))
    for p in blocks:
        check_protocol_name(p, f"{_at(file, path, 'protocols')}: ")
        if config_protocol(p) != p:
            raise UserError(f"{_at(file, path)}: protocols.{p} is never read ({p} evaluates the "
                            f"{config_protocol(p)} training); put those settings under protocols.{config_protocol(p)}")
    return blocks


def _shot_blocks(parent: dict, file: str, path: str) -> dict[int, dict]:
    where = _at(file, path, "shots")
    return {_shots_key(k, where): v for k, v in _mapping(parent.get("shots"), where).items()}


def layers(data: dict, file: str, options_cls: type, protocol: str, dataset: str | None, shots: int | None,
           path: str = "") -> list[dict]:
    """The blocks of one config file that apply to a job, in precedence order (later wins): the
    file's train/method < protocols.<p> < protocols.<p>.shots.<k> < shots.<k> < datasets.<d>, whose
    block is read the same way (``path``: where that block stands). The whole file is checked first,
    blocks that do not apply too."""
    _check_block(data, _at(file, path), DATASET_BLOCK if path else SECTIONS, options_cls)
    protocols = _protocol_blocks(data, file, path)
    per_shots = {}
    for p, blk in protocols.items():
        _check_block(blk, _at(file, path, f"protocols.{p}"), PROTOCOL_BLOCK, options_cls)
        per_shots[p] = _shot_blocks(blk, file, _join(path, f"protocols.{p}"))
        for k, sblk in per_shots[p].items():
            _check_block(sblk, _at(file, path, f"protocols.{p}.shots.{k}"), SETTINGS, options_cls)
    top_shots = _shot_blocks(data, file, path)
    for k, sblk in top_shots.items():
        _check_block(sblk, _at(file, path, f"shots.{k}"), SETTINGS, options_cls)
    out = [data, protocols.get(protocol) or {}]
    if shots is not None:
        out += [per_shots.get(protocol, {}).get(shots) or {}, top_shots.get(shots) or {}]
    for d, dblk in (_mapping(data.get("datasets"), _at(file, "datasets")) if not path else {}).items():
        inner = layers(_mapping(dblk, _at(file, f"datasets.{d}")), file, options_cls, protocol, dataset, shots,
                       f"datasets.{d}")
        if d == dataset:
            out += inner
    return out


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
    merged: dict = {"train": {}, "method": {}}
    for block in layers(method_defaults(method), f"{method}.yaml", options_cls, protocol, dataset, shots):
        _merge(merged, block)
    if imported:
        _merge(merged, imported)
    if config_file:
        user = _read_yaml(Path(config_file))
        for block in layers(user, f"config {config_file}", options_cls, protocol, dataset, shots):
            _merge(merged, block)
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
