"""Typed run configuration: per-method YAML defaults, ``--config`` files and ``--set`` overrides.

Resolution, later wins:
  TrainConfig defaults < ``configs/methods/<method>.yaml`` (train:, method:)
  < its ``protocols.<protocol>`` block < its ``shots.<k>`` block < its ``datasets.<name>`` block
  < the settings an imported state was learned with (``imported``: ``cpbench run --from-export``)
  < ``--config FILE`` (same shape) < ``--set key=value`` (``epochs=1``, ``train.lr=0.01``,
  ``method.n_ctx=8``; a bare key is looked up in train first, then method options).

``dg`` jobs resolve as ``cross_dataset`` (DG evaluates the cross-dataset training; one checkpoint
serves both), so a ``protocols.dg`` block would never be read: none ships, and a ``--config`` file
with one is refused.

The config hash covers the method name, the resolved train settings and method options, so a
results row says exactly which hyperparameters produced it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from cpbench.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs" / "methods"
PRECISIONS = ("fp16", "amp", "bf16", "fp32")


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
        return self


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
        return {"method": self.method, "train": asdict(self.train), "options": asdict(self.options)}

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
    options = options_cls.from_dict(merged["method"], f"{method} option")
    return ResolvedConfig(method, train, options)
