"""The results row: the contract between ``run`` and ``report``. Columns may be added; the
required ones are never renamed."""

from __future__ import annotations

import platform
import time

import pyarrow as pa

REQUIRED = [
    "run_id", "method", "protocol", "train_dataset", "eval_dataset", "subset", "shots", "seed",
    "backbone", "pretrained", "config_hash", "accuracy", "n_test", "n_classes", "epochs", "precision",
    "train_seconds", "eval_seconds", "device", "started_at", "finished_at", "cpbench_version",
    "torch_version", "open_clip_version",
]

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("job_key", pa.string()),
    ("method", pa.string()),
    ("protocol", pa.string()),
    ("train_dataset", pa.string()),
    ("eval_dataset", pa.string()),
    ("subset", pa.string()),
    ("shots", pa.int64()),
    ("seed", pa.int64()),
    ("backbone", pa.string()),
    ("pretrained", pa.string()),
    ("weights", pa.string()),
    ("config_hash", pa.string()),
    ("config_json", pa.string()),
    # the method's default settings for this job when the row was written (config_json's shape), so
    # the report labels a row against the defaults it ran with, whatever the YAML says later
    ("defaults_json", pa.string()),
    ("accuracy", pa.float64()),
    ("correct", pa.int64()),
    ("n_test", pa.int64()),
    ("n_classes", pa.int64()),
    ("epochs", pa.int64()),
    ("precision", pa.string()),
    ("precision_requested", pa.string()),
    ("n_learnable", pa.int64()),
    ("feature_cache", pa.string()),
    ("train_features", pa.string()),
    ("train_seconds", pa.float64()),
    ("eval_seconds", pa.float64()),
    ("device", pa.string()),
    ("device_name", pa.string()),          # the GPU model (torch.cuda.get_device_name) or the CPU's; see device_name()
    ("peak_memory_mb", pa.float64()),      # the job's peak (cpbench/engine/memory.py)
    ("peak_memory_source", pa.string()),   # cuda.max_memory_allocated | process maxrss
    ("imported", pa.string()),
    # where the few-shot training images came from: "cpbench" (its sorted-order draw), "dassl-pkl (=
    # cpbench draw)" (CoOp's split_fewshot pkl, same images) or "dassl-pkl:<digest>" (other images:
    # another entry in the report); "" = no draw (full train set, imported state); null = older rows
    ("fewshot_source", pa.string()),         # "" = trained by cpbench; else KIND:IDENTITY (cpbench/state/imports.py)
    # continual: evaluated after training task ``task`` of ``n_tasks`` (subset = "task<j>": the
    # classes of task j; "seen": every class seen so far); class_order: JSON list of the class
    # names in task order. Null for other protocols.
    ("task", pa.int64()),
    ("n_tasks", pa.int64()),
    ("class_order", pa.string()),
    # retrieval: accuracy = recall at K in percent (subset = "i2t" | "t2i"); null otherwise
    ("recall_at", pa.int64()),
    ("host", pa.string()),
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
    ("cpbench_version", pa.string()),
    ("torch_version", pa.string()),
    ("open_clip_version", pa.string()),
])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def environment() -> dict:
    import open_clip
    import torch

    import cpbench

    return {"cpbench_version": cpbench.__version__, "torch_version": torch.__version__,
            "open_clip_version": open_clip.__version__, "host": platform.node()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device) -> str:
    """What ran the job, for the cost view (jobs on different hardware are never averaged): the
    GPU model (``torch.cuda.get_device_name``) for a CUDA device, else ``cpu: <CPU model>``."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type}: {_cpu_name()}"
