"""``cpbench import-logs DIR``: the results of the official CoOp-family scripts, read from their
output folders into results rows, so ``report`` puts those runs next to cpbench's.

What is read. Dassl's trainer prints, after ``Evaluate on the *test* set``, the block

    => result
    * total: 1,881
    * correct: 1,813
    * accuracy: 96.4%

into ``log.txt`` of the run's output folder (a re-run of the same folder writes
``log.txt-<date>``: the newest file that has a test result counts). The last test block of a log
is its result. The log's printed config gives the backbone (``BACKBONE: NAME: ViT-B/16``), the
epochs (``MAX_EPOCH``), the precision (``PREC``) and Bayesian PL's ``VPT_TYPE``; its dataset
summary the number of classes; ``Elapsed:`` the training time; the environment dump the torch
version.

Where (the official scripts' ``--output-dir``, matched on the end of each folder holding a log):

- base-to-new (CoOp/CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, Bayesian PL):
  ``…/{train_base,test_base,test_new}/<dataset>/shots_<k>/<Trainer>/<cfg>/seed<s>``: base
  (train_base: the test after training; test_base, where present, wins) or new classes;
- few-shot (CoOp ``main.sh``, PromptSRC ``few_shot.sh``) and the cross-dataset source training
  (``xd_train.sh``): ``…/<dataset>/<Trainer>/<cfg>_<k>shots[/nctx<n>_csc<c>_ctp<p>]/seed<s>``;
  on ImageNet with evaluation folders of the same trainer and cfg it is the cross-dataset / DG
  source column, else a few-shot row;
- cross-dataset / DG targets (``xd_test.sh``, CoOp ``eval.sh``):
  ``…/evaluation/<Trainer>/<cfg>_<k>shots[/nctx…]/<dataset>/seed<s>`` (trained on ImageNet);
- LAMM's few-shot scripts: ``…/base/<dataset>/shots_<k>/<LAMM|CoOp|MaPLe>/<cfg>/seed<s>`` (LAMM's
  folder name ``LAMM`` is its ``--origin-clip`` run: ``lamm``; ``CoOp``/``MaPLe``: ``coop_lamm`` /
  ``maple_lamm``).

Rows. ``imported = "dassl-log:<Trainer>/<cfg>"`` (one entry per trainer and config, all seeds and
both base-to-new halves together; never the same entry as trained rows), the config hash a digest
of that (the settings themselves are the official cfg's, not cpbench's YAML), one shard per log,
named by its layout path and content, so importing the same logs again replaces them. The logs
hold no per-image predictions: ``--ci``, ``--compare-methods`` and ``--per-class`` have nothing
behind these rows (the report says so).

Every log is read and checked before any row is written; a folder in none of the layouts, an
unknown trainer or dataset is one line naming the folder and what was expected (exit 2). A log
without a test result (an unfinished run) is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cpbench.errors import UserError

TRAINERS = {"CoOp": "coop", "CoCoOp": "cocoop", "MaPLe": "maple", "IVLP": "ivlp", "PromptSRC": "promptsrc",
            "KgCoOp": "kgcoop", "ProGrad": "prograd", "ZeroshotCLIP": "zeroshot", "ZeroshotCLIP2": "zeroshot",
            "CLIP_Adapter": "clip_adapter", "LAMM": "lamm", "PRE": "pre", "CPL": "cpl"}
LAMM_TRAINERS = {"LAMM": "lamm", "CoOp": "coop_lamm", "MaPLe": "maple_lamm"}
VPT_TYPES = ("coopvpt", "cocoopvpt")   # Bayesian PL's trainer VPT: TRAINER.VPT.VPT_TYPE picks the method
BASE2NEW = {"train_base": "base", "test_base": "base", "test_new": "new"}
SEED = re.compile(r"seed(\d+)$")
SHOTS_DIR = re.compile(r"shots_(\d+)$")
CFG_SHOTS = re.compile(r"(.+)_(\d+)shots$")
NCTX = re.compile(r"nctx\d+_csc\w+_ctp\w+$")
EXPECTED = ("expected an official output folder: …/{train_base,test_base,test_new}/<dataset>/shots_<k>/<Trainer>/"
            "<cfg>/seed<s>, …/<dataset>/<Trainer>/<cfg>_<k>shots[/nctx…]/seed<s>, …/evaluation/<Trainer>/"
            "<cfg>_<k>shots[/nctx…]/<dataset>/seed<s> or LAMM's …/base/<dataset>/shots_<k>/<Trainer>/<cfg>/seed<s>")
RESULT = re.compile(r"=> result\s*\n\* total: ([\d,]+)\s*\n\* correct: ([\d,]+)\s*\n\* accuracy: ([\d.]+)%")
SPLIT_MARK = re.compile(r"Evaluate on the \*(\w+)\* set|Do evaluation on (\w+) set")


@dataclass(frozen=True)
class Place:
    """What a log's folder says: the run's method, protocol, datasets, subset, shots and seed."""
    trainer: str
    cfg: str
    method: str
    protocol: str           # base2new | few_shot | cross_dataset | dg ("source": decided with the others)
    train_dataset: str
    eval_dataset: str
    subset: str
    shots: int
    seed: int
    layout: str             # the folder path from the layout's first part on (stable across machines)
    priority: int = 0       # base2new: test_base (1) wins over train_base (0)


@dataclass(frozen=True)
class Result:
    total: int
    correct: int
    accuracy: float


def test_result(text: str) -> Result | None:
    """The last ``=> result`` block that evaluates the test set: the last block after the last
    test-set marker (a log without any split marker: its last block); None when the log has none
    (an unfinished run, whose only blocks are the val evaluations)."""
    marks = list(SPLIT_MARK.finditer(text))
    tests = [m for m in marks if (m.group(1) or m.group(2)) == "test"]
    if marks and not tests:
        return None
    start = tests[-1].end() if tests else 0
    end = next((m.start() for m in marks if m.start() > start), len(text))
    found = list(RESULT.finditer(text, start, end))
    if not found:
        return None
    total, correct, acc = found[-1].groups()
    return Result(int(total.replace(",", "")), int(correct.replace(",", "")), float(acc))


def _config_value(text: str, pattern: str) -> str:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def backbone_of(text: str, cfg: str) -> str:
    """open_clip's name of the log's CLIP (``ViT-B/16`` -> ``ViT-B-16``), from the printed config,
    else from the cfg name (``vit_b16_…``); "" when neither says."""
    name = _config_value(text, r"^\s*BACKBONE:\s*\n\s*NAME:\s*(\S+)")
    if name:
        return name.replace("/", "-")
    m = re.match(r"(vit_[bl]\d+|rn\d+)", cfg)
    if not m:
        return ""
    part = m.group(1)
    return f"ViT-{part[4].upper()}-{part[5:]}" if part.startswith("vit") else part.upper()


def _dataset(name: str, folder: Path) -> str:
    from cpbench.data.specs import BUILTIN

    known = {s.name for s in BUILTIN}
    if name not in known:
        raise UserError(f"{folder}: dataset folder {name!r} is not one of the official datasets ({', '.join(sorted(known))}); "
                        f"{EXPECTED}")
    return name


def _method(trainer: str, folder: Path, text: str, table: dict[str, str] = TRAINERS) -> str:
    if trainer == "VPT":
        vpt = _config_value(text, r"^\s*VPT_TYPE:\s*(\w+)")
        if vpt in VPT_TYPES:
            return vpt
        raise UserError(f"{folder}: a Bayesian PL (VPT) log whose config does not name VPT_TYPE "
                        f"({' or '.join(VPT_TYPES)}); cannot tell which method ran")
    if trainer not in table:
        raise UserError(f"{folder}: trainer folder {trainer!r} is not one cpbench maps to a method "
                        f"(known: {', '.join(sorted({*table, 'VPT'}))}); {EXPECTED}")
    return table[trainer]


def place_of(folder: Path, text: str) -> Place | None:
    """The run a log folder holds, from the official scripts' folder names; None if in no layout."""
    p = folder.parts
    m = SEED.match(p[-1]) if p else None
    if m is None:
        return None
    seed = int(m.group(1))
    # base-to-new / LAMM few-shot: <split>/<dataset>/shots_<k>/<Trainer>/<cfg>/seed<s>
    if len(p) >= 6 and SHOTS_DIR.match(p[-4]):
        split, dataset, trainer, cfg = p[-6], p[-5], p[-3], p[-2]
        shots = int(SHOTS_DIR.match(p[-4]).group(1))
        if split in BASE2NEW:
            layout = "/".join(p[-6:]) if len(p) < 7 else "/".join(p[-7:])
            return Place(trainer, cfg, _method(trainer, folder, text), "base2new", _dataset(dataset, folder),
                         dataset, BASE2NEW[split], shots, seed, layout, int(split == "test_base"))
        if split == "base":
            return Place(trainer, cfg, _method(trainer, folder, text, LAMM_TRAINERS), "few_shot",
                         _dataset(dataset, folder), dataset, "all", shots, seed, "/".join(p[-6:]))
        return None
    rest = list(p[:-1])
    nctx = rest.pop() if rest and NCTX.match(rest[-1]) else ""
    # cross-dataset / DG targets: evaluation/<Trainer>/<cfg>_<k>shots[/nctx…]/<dataset>/seed<s>
    if len(p) >= 5 and "evaluation" in p[:-2]:
        i = len(p) - 1 - p[::-1].index("evaluation")
        tail = list(p[i + 1:-1])
        if len(tail) in (3, 4) and CFG_SHOTS.match(tail[1]) and (len(tail) == 3 or NCTX.match(tail[2])):
            trainer, (cfg, shots), dataset = tail[0], CFG_SHOTS.match(tail[1]).groups(), tail[-1]
            cfg = cfg + (f"/{tail[2]}" if len(tail) == 4 else "")
            from cpbench.data.specs import IMAGENET_VARIANTS

            protocol = "dg" if dataset in IMAGENET_VARIANTS else "cross_dataset"
            return Place(trainer, cfg, _method(trainer, folder, text), protocol, "imagenet",
                         _dataset(dataset, folder), "all", int(shots), seed, "/".join(p[i:]))
        return None
    # few-shot / cross-dataset source: <dataset>/<Trainer>/<cfg>_<k>shots[/nctx…]/seed<s>
    if len(rest) >= 3 and CFG_SHOTS.match(rest[-1]):
        dataset, trainer = rest[-3], rest[-2]
        cfg, shots = CFG_SHOTS.match(rest[-1]).groups()
        cfg = cfg + (f"/{nctx}" if nctx else "")
        n = 4 + bool(nctx)
        return Place(trainer, cfg, _method(trainer, folder, text), "few_shot", _dataset(dataset, folder), dataset,
                     "all", int(shots), seed, "/".join(p[-n:]))
    return None


def log_files(folder: Path) -> list[Path]:
    """The folder's Dassl logs, newest first (``log.txt-<date>`` of re-runs before ``log.txt``)."""
    return sorted((f for f in folder.iterdir() if f.is_file() and (f.name == "log.txt" or f.name.startswith("log.txt-"))),
                  key=lambda f: (f.name != "log.txt", f.name), reverse=True)


@dataclass(frozen=True)
class Found:
    place: Place
    log: Path
    text: str
    result: Result


def scan(root: Path, warn: Callable[[str], None]) -> list[Found]:
    """Every importable log under ``root`` (checked, nothing written); a folder in no layout raises."""
    if not root.is_dir():
        raise UserError(f"import-logs {root}: no such folder; pass the official scripts' output folder")
    folders = sorted({f.parent for f in root.rglob("log.txt*") if f.is_file()})
    if not folders:
        raise UserError(f"import-logs {root}: no Dassl log.txt under it; pass the official scripts' output folder")
    found = []
    for folder in folders:
        logs = log_files(folder)
        texts = [(f, f.read_text(encoding="utf-8", errors="replace")) for f in logs]
        with_result = [(f, t, test_result(t)) for f, t in texts]
        with_result = [x for x in with_result if x[2] is not None]
        place = place_of(folder, texts[0][1])
        if place is None:
            raise UserError(f"import-logs: {folder}: not an official output folder; {EXPECTED}")
        if not with_result:
            warn(f"skipped {logs[0]}: no '=> result' block after 'Evaluate on the *test* set' (an unfinished run?)")
            continue
        log, text, result = with_result[0]
        found.append(Found(place, log, text, result))
    return _sources(found)


def _sources(found: list[Found]) -> list[Found]:
    """An ImageNet few-shot-layout run whose trainer and cfg also have evaluation folders is the
    cross-dataset / DG source column (one row per protocol present), not a few-shot row; a
    base-to-new cell read twice (train_base and test_base) keeps test_base."""
    targets = {(f.place.trainer, f.place.cfg, f.place.shots, f.place.protocol) for f in found
               if f.place.protocol in ("cross_dataset", "dg")}
    out = []
    for f in found:
        pl = f.place
        if pl.protocol == "few_shot" and pl.train_dataset == "imagenet":
            protocols = sorted({t[3] for t in targets if t[:3] == (pl.trainer, pl.cfg, pl.shots)})
            if protocols:
                from dataclasses import replace

                out += [Found(replace(pl, protocol=p), f.log, f.text, f.result) for p in protocols]
                continue
        out.append(f)
    best: dict[tuple, Found] = {}
    for f in out:
        pl = f.place
        cell = (pl.method, pl.trainer, pl.cfg, pl.protocol, pl.train_dataset, pl.eval_dataset, pl.subset, pl.shots,
                pl.seed)
        if cell not in best or pl.priority > best[cell].place.priority:
            best[cell] = f
    return list(best.values())


def _n_classes(text: str) -> int | None:
    v = _config_value(text, r"^\s*#\s*classes\s+([\d,]+)\s*$")
    return int(v.replace(",", "")) if v else None


def _elapsed(text: str) -> float | None:
    m = re.search(r"Elapsed:\s*(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)", text)
    if not m:
        return None
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def row(f: Found, version: str) -> dict:
    """One results row (``cpbench/results/schema.py``) for one imported log."""
    pl, text = f.place, f.text
    ident = f"{pl.trainer}/{pl.cfg}"
    epochs = _config_value(text, r"^\s*MAX_EPOCH:\s*(\d+)")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(f.log.stat().st_mtime))
    return {
        "run_id": hashlib.sha256(f"{pl.layout}\0{f.log.name}".encode()).hexdigest()[:12],
        "job_key": shard_key(f), "method": pl.method, "protocol": pl.protocol,
        "train_dataset": pl.train_dataset, "eval_dataset": pl.eval_dataset, "subset": pl.subset,
        "shots": pl.shots, "seed": pl.seed, "backbone": backbone_of(text, pl.cfg), "pretrained": "openai",
        "weights": "", "config_hash": hashlib.sha256(f"dassl-log:{ident}".encode()).hexdigest(), "config_json": "",
        "defaults_json": "", "accuracy": f.result.accuracy, "correct": f.result.correct, "n_test": f.result.total,
        "n_classes": _n_classes(text), "epochs": int(epochs) if epochs else None,
        "precision": _config_value(text, r"^\s*PREC:\s*[\"']?(\w+)"), "train_seconds": _elapsed(text),
        "imported": f"dassl-log:{ident}", "fewshot_source": "", "device": "", "host": "",
        "started_at": stamp, "finished_at": stamp, "cpbench_version": version,
        "torch_version": _config_value(text, r"^PyTorch version:\s*(\S+)"), "open_clip_version": "",
    }


def shard_key(f: Found) -> str:
    """The shard of one imported log: its layout path and content, so a second import replaces it."""
    pl = f.place
    digest = hashlib.sha256(f"{pl.protocol}\0{pl.layout}\0{f.text}".encode()).hexdigest()[:16]
    return f"dassl-log-{pl.method}-{pl.eval_dataset}-s{pl.seed}-{digest}"


def command(root: Path, results: Path, warn: Callable[[str], None] = lambda m: None) -> str:
    """``cpbench import-logs``: scan ``root``, then write one shard per log; the summary line."""
    import cpbench
    from cpbench.paths import check_folder
    from cpbench.results.store import ResultStore

    check_folder(results, "--results")
    found = scan(Path(root).expanduser().resolve(), warn)
    if not found:
        raise UserError(f"import-logs {root}: no log with a test result; nothing imported")
    store = ResultStore(results)
    for f in found:
        store.write(shard_key(f), [row(f, cpbench.__version__)])
    groups = sorted({f"{f.place.method} ({f.place.trainer}/{f.place.cfg})" for f in found})
    return (f"imported {len(found)} result(s) from the official logs under {root} into {store.root}, marked "
            f"imported dassl-log: {', '.join(groups)}; they hold no per-image predictions (--ci, "
            "--compare-methods and --per-class have nothing behind them)")
