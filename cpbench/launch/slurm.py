"""``--launcher slurm``: one SLURM job-array task per job, submitted through submitit.

Each task runs ``python -m cpbench.launch.worker --payload FILE`` where FILE is the job's JSON
payload under ``RESULTS/slurm/<batch>/``; submitit's own logs go to the same folder. Only a
command line (a list of strings, inside submitit's ``CommandFunction``) passes through
submitit's serialisation -- the job itself travels as JSON. Results land in the same shards as
a plain ``cpbench run``; re-submitting resumes and skips finished jobs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cpbench import atomic
from cpbench.errors import UserError
from cpbench.launch import job_payload


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int | None = None
    array_parallelism: int = 64
    account: str | None = None
    cluster: str = "slurm"       # "local" = submitit's local executor (tests, a machine without SLURM)


def parse_time(text: str) -> int:
    """``--time`` as minutes: ``90``, ``1:30`` (h:mm) or ``1-00:00`` (d-hh:mm)."""
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(x) for x in rest.split(":")]
        if len(parts) == 1:
            mins = parts[0]
        elif len(parts) == 2:
            mins = parts[0] * 60 + parts[1]
        elif len(parts) == 3:
            mins = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
        else:
            raise ValueError
        mins += int(days or 0) * 24 * 60
    except ValueError:
        raise UserError(f"--time takes minutes or h:mm (e.g. 240 or 4:00), got {text!r}") from None
    if mins <= 0:
        raise UserError(f"--time must be positive, got {text!r}")
    return mins


def options(launcher: str, partition: str | None, time: str, gpus_per_job: int, cpus_per_job: int,
            array_parallelism: int, account: str | None) -> dict:
    """``cpbench run``'s SLURM options as ``SlurmOptions`` fields (none unless ``--launcher slurm``)."""
    if launcher != "slurm":
        return {}
    return dict(partition=partition, time_min=parse_time(time), gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                array_parallelism=array_parallelism, account=account)


def submit_slurm(jobs, settings: dict, opts: SlurmOptions, folder: Path, say=print) -> list:
    """Submit ``jobs`` as one array; returns submitit Job handles (``.job_id``, ``.result()``)."""
    try:
        import submitit
        from submitit.helpers import CommandFunction
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'cpbench[slurm]'") from None
    batch = Path(folder) / time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while batch.exists():
        n += 1
        batch = batch.with_name(f"{batch.name.split('.')[0]}.{n}")
    payload_files = []
    for i, job in enumerate(jobs):
        path = batch / "jobs" / f"{i:05d}.json"
        atomic.write_json(path, job_payload(job, settings, None if opts.gpus_per_job > 0 else "cpu"))
        payload_files.append(path)
    handles = []
    try:
        executor = submitit.AutoExecutor(folder=batch / "logs", cluster=opts.cluster)
        params = dict(timeout_min=opts.time_min, gpus_per_node=opts.gpus_per_job, cpus_per_task=opts.cpus_per_job,
                      name="cpbench", slurm_array_parallelism=opts.array_parallelism)
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.account:
            params["slurm_account"] = opts.account
        if opts.mem_gb:
            params["mem_gb"] = opts.mem_gb
        executor.update_parameters(**params)
        with executor.batch():
            for path in payload_files:
                fn = CommandFunction([sys.executable, "-m", "cpbench.launch.worker", "--payload", str(path)],
                                     verbose=False)
                handles.append(executor.submit(fn))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:  # no sbatch, sbatch refused
        shutil.rmtree(batch, ignore_errors=True)  # nothing half-submitted is left behind
        raise UserError(f"SLURM submission failed ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}); "
                        "run from a SLURM login node and check --partition/--time/--gpus-per-job") from None
    for job, h in zip(jobs, handles):
        say(f"submitted {h.job_id}: {job.describe()}")
    return handles
