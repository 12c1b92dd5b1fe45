"""Which results rows may share a cell, and what the tables call them.

Rows are comparable (one *entry*) when they agree on the method, the backbone (name, pretrained
tag, ``--weights`` file), where the learned state came from (``imported``: trained by cpbench, or
loaded from the authors' checkpoints / an export), the effective precision (``precision``: a CPU
fp32 fallback and a GPU fp16 run are different numbers; rows without the column share "") and
the configuration. The configuration is
what the run changed relative to the method's defaults (``cpbench/configs/methods/<m>.yaml`` for
that protocol, dataset and shot count), read from each row's ``config_json``: CoOp's defaults
train ImageNet for 50 epochs and the other datasets for 200, so its rows carry two config hashes
but one configuration (the defaults), while ``--set epochs=2`` is another configuration on every
dataset. The defaults are those the row recorded when it was written (``defaults_json``), so
editing a YAML file later relabels nothing; rows run on defaults that are no longer today's are an
entry of their own (the same label, told apart by its config hash if today's defaults also ran).
Rows written before ``defaults_json`` existed are compared with today's defaults; rows without a
readable ``config_json`` are grouped by ``config_hash`` alone. Within one dataset an entry always
has exactly one config hash, so two settings never share a cell.

Labels say what distinguishes entries of one method (``coop (epochs=1)`` / ``coop (epochs=2)``,
``coop (defaults)``, ``coop (fp32)`` / ``coop (fp16)``), the backbone when the report holds
several, and ``imported`` for rows not trained by cpbench. ``--config-hash`` and ``--latest`` select configurations (``select``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from functools import lru_cache

import pandas as pd

from cpbench.errors import UserError
from cpbench.results.table import Entry

IDENTITY = ("method", "backbone", "pretrained", "weights", "imported", "precision", "shots_from")
# the same (protocol, shots, datasets, subset, seed) in one entry is one cell's seed
CELL = ("protocol", "train_dataset", "eval_dataset", "subset", "shots",
        # continual: the task evaluated after, of how many, in which class order; retrieval: K of R@K
        # (neutral values for the other protocols; see ``normalise``)
        "task", "n_tasks", "class_order", "recall_at")
NEUTRAL = {"task": 0, "n_tasks": 0, "class_order": "", "recall_at": 0}
# train settings that cannot change a result: ignored when matching the papers' setting
RUNTIME_KEYS = ("train.num_workers", "train.checkpoint")
MAX_LABEL_KEYS = 3
ABSENT = "absent"   # not JSON: a setting one side does not have


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns old shards (or hand-made rows) lack get neutral values; re-runs (``--force``)
    replace earlier rows of the same seed, setting and cell."""
    df = frame.copy()
    for col in ("backbone", "pretrained", "weights", "imported", "precision", "config_hash", "config_json",
                "defaults_json", "finished_at"):
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str)
    # training images from CoOp's few-shot pkl files that differ from cpbench's draw are another
    # entry (all seeds together); the same images, however read, are one
    if "fewshot_source" in df.columns:
        source = df["fewshot_source"].fillna("").astype(str)
        df["shots_from"] = source.map(lambda v: "dassl-pkl" if v.startswith("dassl-pkl:") else "")
    else:
        df["shots_from"] = ""
    for col, neutral in NEUTRAL.items():
        if col not in df.columns:
            df[col] = neutral
        df[col] = df[col].fillna(neutral).astype(type(neutral))
    df["_finished"] = pd.to_datetime(df["finished_at"], utc=True, errors="coerce", format="ISO8601")
    if df.empty:
        return df
    df = df.sort_values("_finished", kind="stable", na_position="first")
    return df.drop_duplicates(subset=list(IDENTITY) + list(CELL) + ["config_hash", "seed"], keep="last")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@lru_cache(maxsize=None)
def _method_class(method: str):
    from cpbench.methods.registry import get_method_class

    try:
        return get_method_class(method)
    except UserError:
        return None


def seed_dependent(method: str) -> bool:
    """From the method class (``Method.seed_dependent``); an unknown method counts as seeded."""
    cls = _method_class(method)
    return True if cls is None else bool(cls.seed_dependent)


@lru_cache(maxsize=None)
def _defaults(method: str, protocol: str, dataset: str, shots: int) -> dict | None:
    cls = _method_class(method)
    if cls is None:
        return None
    from cpbench.config import resolve
    from cpbench.protocols.registry import config_protocol

    try:
        cfg = resolve(method, cls.Options, config_protocol(protocol), dataset=dataset, shots=shots)
    except UserError:
        return None
    return _flat(json.loads(json.dumps(cfg.as_dict(), sort_keys=True, default=str)))


def _flat_json(text: str) -> dict | None:
    try:
        return _flat(json.loads(text)) if text else None
    except (ValueError, AttributeError):
        return None


def overrides(method: str, protocol: str, dataset: str, shots: int, config_json: str,
              defaults_json: str = "") -> tuple | None:
    """The settings of ``config_json`` that differ from the method's defaults for this protocol,
    dataset and shot count, as sorted ``(key, json value)`` pairs; None if unreadable. The defaults
    are those the row recorded (``defaults_json``), else today's."""
    cfg = _flat_json(config_json)
    base = _flat_json(defaults_json) or _defaults(method, protocol, dataset, int(shots))
    if cfg is None or base is None:
        return None
    # a key the defaults lack (an option since removed) or a default the row lacks (an option added
    # since) differs too, so equal overrides always mean equal configurations (one hash per cell)
    keys = sorted((set(cfg) | set(base)) - {"method"})
    return tuple((k, json.dumps(cfg[k]) if k in cfg else ABSENT) for k in keys
                 if cfg.get(k, ABSENT) != base.get(k, ABSENT))


def defaults_of_another_time(method: str, protocol: str, dataset: str, shots: int, defaults_json: str) -> str:
    """The hash of a row's recorded defaults when they are not today's (the YAML changed since, or
    the method is gone), else "": the same overrides on other defaults are another configuration."""
    recorded = _flat_json(defaults_json)
    if recorded is None or recorded == _defaults(method, protocol, dataset, int(shots)):
        return ""
    return hashlib.sha256(defaults_json.encode()).hexdigest()[:12]


def annotate(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Entry]]:
    """Adds an ``entry`` column (the entry key) and returns the entries by key."""
    if df.empty:
        return df.assign(entry=pd.Series(dtype=str)), {}
    combo_cols = ["method", "protocol", "train_dataset", "shots", "config_json", "config_hash", "defaults_json"]
    setting = {}
    for combo in df[combo_cols].drop_duplicates().itertuples(index=False):
        ov = overrides(combo.method, combo.protocol, combo.train_dataset, combo.shots, combo.config_json,
                       combo.defaults_json)
        other = defaults_of_another_time(combo.method, combo.protocol, combo.train_dataset, combo.shots,
                                         combo.defaults_json)
        setting[tuple(combo)] = (["known", list(ov)] + ([other] if other else [])) if ov is not None \
            else ["hash", combo.config_hash]
    settings = [setting[tuple(c)] for c in df[combo_cols].itertuples(index=False)]
    keys = [json.dumps([*ident, s]) for ident, s in zip(df[list(IDENTITY)].itertuples(index=False), settings)]
    df = df.assign(entry=keys)
    entries = {}
    for key, g in df.groupby("entry", sort=False):
        ident, s = json.loads(key)[:-1], json.loads(key)[-1]
        fields = dict(zip(IDENTITY, ident))
        entries[key] = Entry(key=key, **fields, overrides=tuple(tuple(p) for p in s[1]) if s[0] == "known" else (),
                             known_config=s[0] == "known", config_hashes=tuple(sorted(set(g["config_hash"]))),
                             seed_dependent=seed_dependent(fields["method"]))
    return df, entries


def default_config(e: Entry) -> bool:
    """The method's default configuration (runtime-only settings aside): the papers' setting."""
    return e.known_config and all(k in RUNTIME_KEYS for k, _ in e.overrides)


# --------------------------------------------------------------------------- labels


def _key_name(key: str) -> str:
    from cpbench.config import TrainConfig

    section, _, name = key.partition(".")
    if section == "train":
        return name
    if section == "options":
        return f"method.{name}" if name in TrainConfig.__dataclass_fields__ else name
    return key


def _show(value_json: str) -> str:
    if value_json == ABSENT:
        return ABSENT
    v = json.loads(value_json)
    if isinstance(v, str) and v and not any(ch in v for ch in " ,=()\"'"):
        return v
    return json.dumps(v)


def settings_text(e: Entry, keys: list[str] | None = None) -> str:
    """``epochs=2, lr=0.01`` (only ``keys`` when given; ``default`` for a key it does not change)."""
    if not e.known_config:
        return f"config {e.config_hashes[0][:8]}" if e.config_hashes else "config unknown"
    ov = dict(e.overrides)
    if keys is None:
        keys = list(ov)
    return ", ".join(f"{_key_name(k)}={_show(ov[k]) if k in ov else 'default'}" for k in keys)


def _differing_keys(siblings: list[Entry]) -> list[str]:
    known = [dict(e.overrides) for e in siblings if e.known_config]
    keys = sorted({k for ov in known for k in ov})
    return [k for k in keys if len({ov.get(k) for ov in known}) > 1]


def _setting_part(e: Entry, siblings: list[Entry]) -> str:
    settings = {(s.known_config, s.overrides if s.known_config else s.config_hashes) for s in siblings}
    if len(settings) < 2:
        return ""
    if not e.known_config:
        return settings_text(e)
    if not e.overrides:
        return "defaults"
    keys = _differing_keys(siblings) or [k for k, _ in e.overrides]
    more = len(keys) - MAX_LABEL_KEYS
    text = settings_text(e, keys[:MAX_LABEL_KEYS])
    return text + (f", +{more} more" if more > 0 else "")


def assign_labels(entries: list[Entry]) -> list[Entry]:
    """Labels unique within the list: method + what distinguishes it (backbone if the report holds
    several, ``imported …`` for imported rows, ``dassl shots`` for rows trained on CoOp's few-shot
    files where those differ from cpbench's draw, the precision when its entries differ in it, the
    settings that differ among its configurations)."""
    backbones = {(e.backbone, e.pretrained, e.weights) for e in entries}
    by_method: dict[str, list[Entry]] = {}
    for e in entries:
        by_method.setdefault(e.method, []).append(e)
    out = []
    for e in entries:
        sib = by_method[e.method]
        parts = []
        if len(backbones) > 1:
            parts.append(e.backbone_label)
        if e.imported:
            kind, _, ident = e.imported.partition(":")
            several = len({s.imported for s in sib if s.imported.partition(":")[0] == kind}) > 1
            # an imported log's identity is its official trainer and cfg: readable, and its setting
            parts.append(f"imported {e.imported}" if kind == "dassl-log" else
                         f"imported {kind}" + (f":{ident[:8]}" if several else ""))
        if e.shots_from:
            parts.append("dassl shots")
        if len({s.precision for s in sib}) > 1:
            parts.append(e.precision or "precision unknown")
        setting = "" if e.imported.startswith("dassl-log:") else _setting_part(e, sib)
        if setting:
            parts.append(setting)
        out.append(replace(e, label=e.method + (f" ({', '.join(parts)})" if parts else "")))
    seen: dict[str, int] = {}
    for e in out:
        seen[e.label] = seen.get(e.label, 0) + 1
    return [replace(e, label=f"{e.label} #{e.config_hashes[0][:8]}") if seen[e.label] > 1 and e.config_hashes else e
            for e in out]


# --------------------------------------------------------------------------- selection


@dataclass
class Choice:
    """One selection made by --config-hash or --latest, for the report's note."""
    how: str                 # "--config-hash PREFIX" | "--latest"
    scope: str               # "coop" or "base2new coop"
    kept: list[str]          # entry keys
    dropped: int


def select(df: pd.DataFrame, config_hashes: list[str], latest: bool) -> tuple[pd.DataFrame, list[Choice]]:
    choices = []
    if config_hashes:
        keep_for: dict[str, set[str]] = {}
        for prefix in config_hashes:
            if not prefix.strip():
                raise UserError("--config-hash needs a (prefix of a) config hash; the report's notes list them")
            hit = df[df["config_hash"].str.startswith(prefix.strip())]
            if hit.empty:
                raise UserError(f"--config-hash {prefix}: no results row has a config hash starting with it; "
                                "run `cpbench report` without it to see each configuration's hash")
            for method, g in hit.groupby("method"):
                keep_for.setdefault(method, set()).update(g["entry"])
        for method, keys in sorted(keep_for.items()):
            dropped = df.loc[(df["method"] == method) & ~df["entry"].isin(keys), "entry"].nunique()
            choices.append(Choice(f"--config-hash {' '.join(config_hashes)}", method, sorted(keys), dropped))
        df = df[~df["method"].isin(keep_for) | df["entry"].isin(set().union(*keep_for.values()))]
    if latest:
        keep = []
        for (protocol, method), g in df.groupby(["protocol", "method"], sort=True):
            newest = g.groupby("entry")["_finished"].max().sort_values(kind="stable", na_position="first")
            keep.append(g[g["entry"] == newest.index[-1]])
            if len(newest) > 1:
                choices.append(Choice("--latest", f"{protocol} {method}", [newest.index[-1]], len(newest) - 1))
        df = pd.concat(keep) if keep else df
    return df, choices
