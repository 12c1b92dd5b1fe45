"""The export file: one self-describing safetensors file holding a learned prompt model.

Format ``cpbench-prompts``, version 1:

- tensors ``state.<name>``: the method's learned state (``Method.learned_state()``) as trained;
- for methods whose classifier is a fixed matrix of class text features (``Method.text_classifier``)
  also ``text_features`` [C, E] (float32, L2-normalised, the training classes in label order) and
  ``logit_scale`` (a scalar): ``logits = logit_scale * normalise(image_features) @ text_features.T``
  with the frozen, unprompted image encoder, so plain open_clip can use them;
- metadata (safetensors' string map): ``format`` = ``pt`` (safetensors' own convention),
  ``cpbench.format`` = ``cpbench-prompts``, ``cpbench.format_version`` = ``1`` and ``cpbench.meta``,
  a JSON object: method, config (resolved train settings + method options) and its hash, backbone
  (name, pretrained tag, weights file name + sha256 for a local checkpoint, the embedded toy's
  fingerprint, a weights fingerprint that ignores fp16/fp32, QuickGELU, context length),
  preprocess, class names in label order, template, the job it came from (protocol, dataset, class
  subset, shots, seed, its targets with the torch seed each evaluation used, and its rows'
  accuracies) and versions.

No pickle anywhere. This module also is the ``export:`` backend of cpbench/state/imports.py
(``cpbench run METHOD --from-export FILE``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cpbench.errors import UserError

FORMAT = "cpbench-prompts"
VERSION = 1
STATE = "state."


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading and writing


def read_meta(path: str | Path) -> dict:
    """The metadata of an export file, or one line saying why ``path`` is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such export file; write one with `cpbench export METHOD --dataset D --seed S --out FILE`")
    try:
        with safe_open(str(path), framework="numpy") as fh:  # the header only (no torch import)
            raw = fh.metadata() or {}
    except Exception:
        raise UserError(f"{path} is not a safetensors file; pass a file written by `cpbench export`") from None
    if raw.get("cpbench.format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a cpbench export (no cpbench.format entry); "
                        "pass a file written by `cpbench export`")
    try:
        version = int(raw.get("cpbench.format_version", ""))
        meta = json.loads(raw["cpbench.meta"])
    except (KeyError, ValueError):
        raise UserError(f"{path}: its cpbench metadata is damaged; export it again") from None
    if version > VERSION:
        raise UserError(f"{path} is export format version {version}; this cpbench reads version {VERSION} and "
                        "older: upgrade cpbench")
    return meta


def read(path: str | Path) -> tuple[dict, dict]:
    """(metadata, tensors) of an export file."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    return meta, load_file(str(path))


def learned_state(tensors: dict) -> dict:
    return {k[len(STATE):]: v for k, v in tensors.items() if k.startswith(STATE)}


def write(path: str | Path, meta: dict, state: dict, text_features=None, logit_scale=None) -> None:
    """Write atomically: a reader sees the whole file or none."""
    from safetensors.torch import save_file

    from cpbench import atomic

    tensors = {f"{STATE}{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    if text_features is not None:
        tensors["text_features"] = text_features.detach().float().cpu().contiguous()
        tensors["logit_scale"] = logit_scale.detach().float().cpu().reshape(()).contiguous()
    metadata = {"format": "pt", "cpbench.format": FORMAT, "cpbench.format_version": str(VERSION),
                "cpbench.meta": json.dumps(meta, sort_keys=True)}
    with atomic.atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# --------------------------------------------------------------------------- the backbone


def backbone_record(backbone) -> dict:
    """What identifies ``backbone``: how to load it again and how to recognise its weights."""
    from cpbench.models.backbone import local_dir_weights, toy_fingerprint

    spec = backbone.spec
    weights = None
    if spec.name.startswith("local-dir:"):
        weights = local_dir_weights(Path(spec.name[len("local-dir:"):]).expanduser())
    elif spec.weights:
        weights = Path(spec.weights)
    return {
        "name": spec.name, "pretrained": spec.pretrained,
        "weights_file": weights.name if weights else None,
        "weights_sha256": file_sha256(weights) if weights else None,
        "toy_fingerprint": toy_fingerprint() if spec.name == "toy" and not spec.weights else None,
        "fingerprint": weights_fingerprint(backbone), "quick_gelu": backbone.quick_gelu,
        "context_length": backbone.context_length, "embed_dim": backbone.embed_dim,
    }


def weights_fingerprint(backbone) -> str:
    """The weights' fingerprint whatever precision the backbone runs in (an fp16 run of the same
    weights matches)."""
    import torch

    return backbone.fingerprint(rounding=torch.float16)


def describe_backbone(rec: dict) -> str:
    if rec.get("weights_sha256"):
        return f"{rec['name']} with weights {rec.get('weights_file')} (sha256 {rec['weights_sha256'][:12]})"
    if rec["name"] == "toy":
        return "toy (the embedded toy CLIP)"
    return f"{rec['name']} --pretrained {rec['pretrained']}"


def describe(meta: dict) -> str:
    """What an export file holds, in words: where it was learned and on which backbone."""
    job = meta.get("job") or {}
    learned = f"{job.get('train_dataset', '?')}/{job.get('train_subset', '?')} {job.get('shots', '?')}-shot seed {job.get('seed', '?')}"
    return f"learned on {learned}, backbone {describe_backbone(meta['backbone'])}"


def check_backbone_request(meta: dict, name: str, pretrained: str, weights: str | None, where) -> None:
    """Refuse, before anything is loaded, a backbone other than the one the prompts were learned on
    (``name``/``pretrained``/``weights`` as ``cpbench run`` takes them)."""
    from cpbench.models.backbone import local_dir_weights, toy_fingerprint

    rec = meta["backbone"]
    want = describe_backbone(rec)
    local = name.startswith("local-dir:") and rec["name"].startswith("local-dir:")
    if name != rec["name"] and not local:
        raise UserError(f"{where} was learned on backbone {want}, not {name}; use that backbone")
    if rec.get("weights_sha256"):
        if local:
            found = local_dir_weights(Path(name[len("local-dir:"):]).expanduser())
            if found is None:
                raise UserError(f"{where} was learned on {want}; {name} has no weights file: pass that backbone's "
                                "folder as local-dir:PATH")
            path = found
        elif not weights:
            raise UserError(f"{where} was learned on {want}; pass --weights PATH (weights=PATH in Python) to that file")
        else:
            path = Path(weights)
            if not path.is_file():
                raise UserError(f"--weights {weights}: no such file")
        if file_sha256(path) != rec["weights_sha256"]:
            raise UserError(f"{path} is not the checkpoint {where} was learned on ({want}); pass that file")
        return
    if weights:
        raise UserError(f"{where} was learned on {want}, not on a local checkpoint; drop --weights")
    if pretrained != rec["pretrained"]:
        raise UserError(f"{where} was learned on backbone {want}, not with --pretrained {pretrained}; use {rec['pretrained']}")
    if rec["name"] == "toy" and rec.get("toy_fingerprint") and rec["toy_fingerprint"] != toy_fingerprint():
        raise UserError(f"{where} was learned on another embedded toy CLIP (fingerprint {rec['toy_fingerprint']}, this "
                        f"cpbench ships {toy_fingerprint()}); use cpbench {meta.get('versions', {}).get('cpbench', '?')}")


def check_loaded_backbone(meta: dict, backbone, where) -> None:
    """Refuse a loaded backbone whose weights or activation differ from the file's."""
    rec = meta["backbone"]
    if bool(rec.get("quick_gelu")) != backbone.quick_gelu:
        act = {True: "QuickGELU", False: "GELU"}
        raise UserError(f"{where} was learned on a backbone with {act[bool(rec.get('quick_gelu'))]}, the given one uses "
                        f"{act[backbone.quick_gelu]} (open_clip: force_quick_gelu; open_clip issue #771)")
    got = weights_fingerprint(backbone)
    if got != rec["fingerprint"]:
        raise UserError(f"the backbone's weights are not those {where} was learned on ({describe_backbone(rec)}; "
                        f"weights fingerprint {got} vs {rec['fingerprint']}); use that backbone")


# --------------------------------------------------------------------------- the export: import backend


def identity(path: str) -> str:
    """A content hash: the same file gives the same rows anywhere, whatever its path."""
    read_meta(path)
    return file_sha256(Path(path))[:16]


def config(path: str) -> dict:
    """The train settings and method options the prompts were learned with (the run's config layer)."""
    cfg = read_meta(path)["config"]
    return {"train": dict(cfg["train"]), "method": dict(cfg["options"])}


def _check_classes(meta: dict, names: list[str], job, where) -> None:
    if list(names) != list(meta["classnames"]):
        src = meta.get("job") or {}
        learned = f"{src.get('train_dataset', '?')}/{src.get('train_subset', '?')}"
        hint = f" (its protocol: {src['protocol']})" if src.get("protocol") else ""
        raise UserError(f"{where} was learned on the classes of {learned} ({len(meta['classnames'])} classes){hint}; "
                        f"this job trains on {job.train_dataset}/{job.train_subset} ({len(names)} classes): pick the "
                        "--protocol/--dataset/--source whose training classes are the file's")


def run_defaults(path: str | Path) -> dict:
    """What ``cpbench run --from-export FILE`` takes from the file where the command line is silent."""
    meta = read_meta(path)
    job = meta.get("job") or {}
    return {"method": meta["method"], "protocol": job.get("protocol"), "seeds": [job["seed"]] if "seed" in job else [],
            "shots": [job["shots"]] if "shots" in job else [], "dataset": job.get("train_dataset"),
            "backbone": meta["backbone"]["name"], "pretrained": meta["backbone"]["pretrained"]}


def check(path: str, req, jobs, data_root) -> None:
    """Before the backbone loads: the file is an export of this method, on this backbone, for this
    seed and shot count, learned on each job's training classes."""
    from cpbench.data import prepare as prep

    meta = read_meta(path)
    if meta["method"] != req.method:
        raise UserError(f"{path} holds {meta['method']} prompts, not {req.method}; run `cpbench run {meta['method']} "
                        f"--from-export {path}`")
    check_backbone_request(meta, req.backbone, req.pretrained, req.weights, path)
    src = meta.get("job") or {}
    if "seed" in src and list(dict.fromkeys(req.seeds)) != [src["seed"]]:
        raise UserError(f"{path} holds the prompts of seed {src['seed']}; one export is one seed: drop --seeds "
                        f"(or pass --seeds {src['seed']})")
    if "seed" not in src and len(set(req.seeds)) != 1:
        raise UserError(f"{path} holds the prompts of one training run; pass one --seeds value")
    if "shots" in src and list(dict.fromkeys(req.shots)) != [src["shots"]]:
        raise UserError(f"{path} holds prompts learned from {src['shots']} shots; drop --shots (or pass --shots {src['shots']})")
    for job in jobs:
        ds = prep.load(job.train_dataset, data_root)
        _, names, _ = prep.subset_items(ds, job.train_subset, 0, job.seed, "train")  # class names: no draw needed
        _check_classes(meta, names, job, path)


def load_state(path: str, job, method, dataset) -> dict:
    """The learned state for ``method`` (built on ``job``'s training classes), checked to fit."""
    meta, tensors = read(path)
    if meta["method"] != method.name:
        raise UserError(f"{path} holds {meta['method']} prompts, not {method.name}")
    _check_classes(meta, method.classnames, job, path)
    check_loaded_backbone(meta, method.backbone, path)
    return fitting_state(learned_state(tensors), method, path)


def fitting_state(state: dict, method, where) -> dict:
    own = method.learned_state()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{where} does not fit {method.name} with these options (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); drop the --set/--config that changes its parameters")
    rows = set(getattr(method, "data_rows", ()))  # one row per training image: any count fits
    for k, v in state.items():
        if tuple(v.shape)[k in rows:] != tuple(own[k].shape)[k in rows:]:
            raise UserError(f"{where}: {k} has shape {list(v.shape)}, {method.name} with these options has "
                            f"{list(own[k].shape)}; drop the --set/--config that changes it")
    return state
