"""Scaling out ``cpbench run`` (issue 8): the same jobs, run by several worker processes.

- ``local``: one worker process per GPU (``--gpus 0,1,2,3``), or several (``--jobs-per-gpu N``,
  or a GPU listed N times), pulling jobs from one queue; each worker sees only its GPU
  (``CUDA_VISIBLE_DEVICES``) and loads the backbone once.
- ``slurm``: one SLURM array task per job through submitit.

Jobs cross process (and machine) boundaries as JSON payloads, never pickles: a payload is
the job (method, protocol, datasets, shots, seed, targets) plus the run settings (paths,
backbone, config overrides). Every worker calls the same ``run_job`` as a plain ``cpbench run``,
so results land in the same layout (one Parquet shard per job, per-epoch checkpoints,
a lock per training key), and re-running any of the three resumes what the others left.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cpbench.errors import JobsFailed, UserError

LAUNCHERS = ("none", "local", "slurm")
PAYLOAD_VERSION = 1


def settings_payload(s) -> dict:
    """JSON-able RunSettings (device as its name; a worker resolves it on its own machine)."""
    return {"data_root": str(s.data_root), "results_root": str(s.results_root), "backbone": s.backbone,
            "pretrained": s.pretrained, "weights": s.weights, "config_file": s.config_file, "sets": list(s.sets),
            "device": str(s.device), "force": bool(s.force), "feature_cache": bool(s.feature_cache),
            "state_from": s.state_from, "tensorboard": str(s.tensorboard) if s.tensorboard else None}


def job_payload(job, settings: dict, device: str | None = None) -> dict:
    j = dataclasses.asdict(job)
    j["targets"] = [dict(t) for t in j["targets"]]
    return {"version": PAYLOAD_VERSION, "job": j, "settings": {**settings, **({"device": device} if device else {})}}


def job_from_payload(p: dict):
    from cpbench.protocols.jobs import Job, Target

    if p.get("version") != PAYLOAD_VERSION:
        raise UserError(f"job payload version {p.get('version')!r} is not {PAYLOAD_VERSION}; "
                        "launch workers with the same cpbench version as the launcher")
    j = dict(p["job"])
    j["targets"] = tuple(Target(**t) for t in j["targets"])
    return Job(**j)


def settings_from_payload(p: dict):
    from cpbench.engine.precision import resolve_device
    from cpbench.protocols.jobs import RunSettings

    s = dict(p["settings"])
    return RunSettings(data_root=Path(s["data_root"]), results_root=Path(s["results_root"]), backbone=s["backbone"],
                       pretrained=s["pretrained"], weights=s["weights"], config_file=s["config_file"],
                       sets=list(s["sets"]), device=resolve_device(s["device"]), force=s["force"],
                       feature_cache=s["feature_cache"], state_from=s.get("state_from"),
                       tensorboard=Path(s["tensorboard"]) if s.get("tensorboard") else None)


def dumps(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True)


def parse_gpus(text: str | None) -> list[str]:
    """``0,1,2,3`` -> ["0", "1", "2", "3"]; a worker per entry (``cpu`` entries run on the CPU)."""
    if not text:
        raise UserError("--launcher local needs --gpus, e.g. --gpus 0,1,2,3 (or --gpus cpu,cpu for CPU workers)")
    gpus = [g.strip() for g in text.split(",")]
    for g in gpus:
        if not (g.isdigit() or g == "cpu"):
            raise UserError(f"--gpus takes comma-separated GPU indices such as 0,1,2,3 (or cpu), got {text!r}")
    return gpus


def check_gpus_exist(gpus: list[str], count: int | None = None) -> None:
    """Every GPU index named in ``--gpus`` is a CUDA device of this machine (``count``: how many
    there are; default: ask torch, which does not initialise CUDA for that)."""
    wanted = sorted({int(g) for g in gpus if g != "cpu"})
    if not wanted:
        return
    if count is None:
        import torch

        count = torch.cuda.device_count()
    missing = [g for g in wanted if g >= count]
    if missing:
        have = "no CUDA GPU" if count == 0 else f"{count} CUDA GPU(s), numbered 0-{count - 1}"
        raise UserError(f"--gpus names GPU {', '.join(map(str, missing))}, but this machine has {have}; "
                        "list existing GPUs (`nvidia-smi -L`) or use --gpus cpu,cpu for CPU workers")


def run(req, settings, jobs, console, out, threads_plan=None) -> list[dict]:
    """``cpbench run --dry-run`` / ``--launcher local|slurm`` after the runner has validated everything.

    Before any job is dispatched, the GPUs named in ``--gpus`` must exist and (local) the backbone
    is loaded once here, so a bad one fails once, not in every job."""
    from cpbench.protocols.jobs import job_config
    from cpbench.protocols.keys import job_key
    from cpbench.results.store import ResultStore

    store = ResultStore(settings.results_root)
    gpus = parse_gpus(req.gpus) if req.launcher == "local" else []
    if req.launcher == "local" and (req.jobs_per_gpu < 1 or req.gpu_headroom < 0):
        raise UserError("--jobs-per-gpu must be >= 1 and --gpu-headroom >= 0 (GiB)")
    if not req.dry_run:
        check_gpus_exist(gpus)
    if req.launcher == "local":
        from cpbench.launch.local import worker_slots

        gpus = worker_slots(gpus, req.jobs_per_gpu)
    slurm_opts = None
    if req.launcher == "slurm":
        from cpbench.launch.slurm import SlurmOptions

        try:
            slurm_opts = SlurmOptions(**req.slurm)
        except TypeError as exc:
            raise UserError(f"unknown SLURM option ({exc}); see `cpbench run --help`") from None
        if slurm_opts.gpus_per_job < 0 or slurm_opts.array_parallelism < 1:
            raise UserError("--gpus-per-job must be >= 0 and --array-parallelism >= 1")
    keys = [job_key(j, job_config(j, settings), settings) for j in jobs]
    todo = [j for j, k in zip(jobs, keys) if settings.force or not store.has(k)]
    if req.dry_run:
        where = {"none": "here", "local": f"local workers on GPUs {','.join(gpus)}", "slurm": "SLURM"}[req.launcher]
        for j, k in zip(jobs, keys):
            state = "done" if (store.has(k) and not settings.force) else "todo"
            out.print(f"{state}  {k}  {j.describe()}", highlight=False, soft_wrap=True)
        out.print(f"{len(jobs)} job(s), {len(todo)} to run ({where}); dry run: nothing was run", highlight=False)
        return []
    payload = {**settings_payload(settings), "device": req.device}  # resolved where the worker runs
    if req.launcher == "local":
        from cpbench import threads
        from cpbench.launch.local import run_local
        from cpbench.models.backbone import load_backbone

        if todo:
            console.print(f"checking backbone {req.backbone} once before starting workers", highlight=False)
            load_backbone(req.backbone, req.pretrained, req.weights)  # loaded, then freed: the workers load their own
        each = threads.share(threads_plan or threads.plan(req.threads), len(gpus))
        console.print(f"{len(todo)} job(s) on {len(gpus)} local worker(s) (GPUs {','.join(gpus)}), "
                      f"{each} CPU thread(s) each", highlight=False)
        summary = run_local(todo, payload, gpus, say=lambda m: console.print(m, highlight=False, soft_wrap=True),
                            threads=each, headroom_gib=req.gpu_headroom)
        out.print(f"{summary.rows} new result row(s) in {store.root}", highlight=False)
        if summary.failed:
            first = summary.failed[0][1]
            msg = (f"{len(summary.failed)} of {len(todo)} job(s) failed (first: {first}); "
                   "fix that and re-run the same command: finished jobs are kept")
            raise JobsFailed(msg) if summary.crashed else UserError(msg)
        return []
    if req.threads not in (None, "", "auto"):
        payload["threads"] = req.threads  # else each array task counts the CPUs SLURM gave it (worker.py)
    from cpbench.launch.slurm import submit_slurm

    handles = submit_slurm(todo, payload, slurm_opts, settings.results_root / "slurm",
                           say=lambda m: out.print(m, highlight=False, soft_wrap=True))
    out.print(f"{len(handles)} SLURM task(s) submitted; results land in {store.root} "
              f"(`cpbench report --results {store.root}` when they finish)", highlight=False)
    return []
