"""``cpbench run``: validate everything first (nothing is written on a bad input), load the
backbone once, plan the protocol's jobs and execute them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from cpbench.errors import Interrupted, JobsFailed, StorageError, UserError

if TYPE_CHECKING:
    from cpbench.protocols.jobs import RunSettings
    from cpbench.threads import ThreadPlan

PROTOCOLS = ("base2new", "cross_dataset", "dg", "few_shot", "continual", "retrieval")


@dataclass
class RunRequest:
    method: str
    datasets: list[str] = field(default_factory=list)
    protocol: str = "base2new"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    shots: list[int] = field(default_factory=lambda: [16])
    backbone: str = "ViT-B-16"
    pretrained: str = "openai"
    weights: str | None = None
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    device: str = "auto"
    results: Path | None = None
    root: Path | None = None
    force: bool = False
    feature_cache: bool = True
    # scaling out (issue 8): "none" runs here, "local" one worker per GPU, "slurm" via submitit
    launcher: str = "none"
    gpus: str | None = None
    jobs_per_gpu: int = 1          # local: workers per listed GPU
    gpu_headroom: float = 2.0      # local: GiB a worker waits for on a GPU shared with other workers
    dry_run: bool = False
    slurm: dict = field(default_factory=dict)   # SlurmOptions fields: partition, time_min, gpus_per_job, ...
    # cross_dataset / dg: the training dataset (a miniature or toy one can stand in for ImageNet)
    source: str = "imagenet"
    # learned state imported instead of trained: "official:DIR" | "export:FILE" (cpbench/imports.py)
    state_from: str | None = None
    # CPU threads: a number or "auto" (cpbench/threads.py); None = $CPBENCH_THREADS / auto
    threads: str | None = None
    # continual: the number of tasks and the class order ("labels" or an integer seed)
    tasks: int = 2
    class_order: str = "labels"


def default_targets(req: RunRequest, prepared: list[str]) -> list[str]:
    """Datasets a protocol evaluates when --datasets is not given."""
    from cpbench.protocols import cross_dataset, domain_generalization

    if req.protocol == "cross_dataset":
        return list(cross_dataset.TARGETS)
    if req.protocol == "dg":
        return list(domain_generalization.TARGETS)
    return prepared  # the prepared datasets of the protocol's task type


def plan_jobs(req: RunRequest, datasets: list[str]):
    """``datasets``: trained-and-evaluated datasets (base2new, few_shot) or targets (cross_dataset,
    dg, trained on ``req.source``)."""
    from cpbench.protocols import base2new, continual, cross_dataset, domain_generalization, few_shot, retrieval

    if req.protocol in ("base2new", "cross_dataset", "dg", "continual") and len(req.shots) != 1:
        raise UserError(f"{req.protocol} takes one --shots value (16 in the papers); "
                        "use --protocol few_shot for several")
    if req.protocol == "base2new":
        return base2new.plan(req.method, datasets, req.seeds, req.shots[0])
    if req.protocol == "cross_dataset":
        return cross_dataset.plan(req.method, datasets, req.seeds, req.shots[0], req.source)
    if req.protocol == "dg":
        return domain_generalization.plan(req.method, datasets, req.seeds, req.shots[0], req.source)
    if req.protocol == "few_shot":
        return few_shot.plan(req.method, datasets, req.seeds, list(dict.fromkeys(req.shots)))
    if req.protocol == "continual":
        return continual.plan(req.method, datasets, req.seeds, req.shots[0], req.tasks, continual.parse_order(req.class_order))
    if req.protocol == "retrieval":
        return retrieval.plan(req.method, datasets, req.seeds, list(dict.fromkeys(req.shots)))
    raise UserError(f"unknown protocol {req.protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _check_datasets(req: RunRequest, root: Path, datasets: list[str]) -> None:
    """Every dataset is prepared and has >= 2 classes (a new half for base2new); every training
    dataset has ``--shots`` images in each of its training classes. Split files only: cheap."""
    from cpbench.data import checks
    from cpbench.data import prepare as prep

    trained = [req.source] if req.protocol in ("cross_dataset", "dg") else datasets
    for d in dict.fromkeys([*trained, *datasets]):
        ds = prep.load(d, root)  # unknown or unprepared -> one clear line
        checks.require_classes(ds.name, ds.split, trained=d in trained)
        if d in trained and not req.state_from:  # imported state is not trained here
            checks.require_shots(ds.name, ds.split, req.shots, "base" if req.protocol == "base2new" else "all")


def validate(req: RunRequest) -> tuple[RunSettings, list, ThreadPlan]:
    """Every check that needs no model: a bad input fails here, before anything is loaded or written."""
    # the cheap checks (names, numbers, prepared datasets) come before anything that imports torch,
    # so a typo costs about a second, not the ~6 s of torch + torchvision imports
    from cpbench import threads
    from cpbench.data import prepare as prep
    from cpbench.methods.registry import check_method_name
    from cpbench.paths import check_folder, data_root, results_root

    check_method_name(req.method)
    if req.launcher not in ("none", "local", "slurm"):
        raise UserError(f"unknown launcher {req.launcher!r}; use none, local or slurm")
    if req.protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {req.protocol!r}; use one of {', '.join(PROTOCOLS)}")
    prep.check_draws(req.shots, req.seeds)
    if not req.seeds:
        raise UserError("--seeds needs at least one seed")
    plan = threads.plan(req.threads)
    root = data_root(req.root)
    task = "retrieval" if req.protocol == "retrieval" else "classification"
    datasets = list(dict.fromkeys(req.datasets)) or default_targets(req, prep.prepared_names(root, task))
    if not datasets:
        what = "image-caption datasets" if task == "retrieval" else "datasets"
        raise UserError(f"no prepared {what} under {root}; run `cpbench prepare DATASET` first (or pass --root)")
    if task == "retrieval":
        from cpbench.data import captions

        for d in datasets:  # unknown or unprepared -> one clear line
            pool = len(captions.load(d, root).split.train)
            for k in req.shots:
                if k > pool:
                    raise UserError(f"--shots for retrieval is the number of training image-caption pairs: 1 to "
                                    f"{pool} for {d}, got {k}")
    else:
        if req.protocol == "continual":
            for d in datasets:
                if not 2 <= req.tasks <= len(prep.load(d, root).split.classnames):
                    raise UserError(f"--tasks must be between 2 and the number of classes of {d}, got {req.tasks}")
        _check_datasets(req, root, datasets)
    from cpbench.engine.precision import resolve_device
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import check_backbone
    from cpbench.protocols.jobs import RunSettings, job_config

    settings = RunSettings(data_root=root, results_root=results_root(req.results), backbone=req.backbone,
                           pretrained=req.pretrained, weights=req.weights, config_file=req.config_file,
                           sets=req.sets, device=resolve_device(req.device), force=req.force,
                           feature_cache=req.feature_cache, state_from=req.state_from)
    check_folder(settings.results_root, "--results")
    jobs = plan_jobs(req, datasets)
    if req.state_from and req.protocol in ("continual", "retrieval"):
        raise UserError(f"--protocol {req.protocol} trains its own state; it cannot start from imported state")
    if req.state_from:  # an imported state that does not fit this run fails before the backbone loads
        from cpbench import imports

        imports.check(req.state_from, req, jobs, root)
    for job in jobs:
        cfg = job_config(job, settings)  # bad --set / --config fail before any work
        why = get_method_class(job.method).unsupported(job.protocol, cfg.options)
        if why:
            raise UserError(why)
    from cpbench.models.families import check_methods   # e.g. maple on a ResNet: from the model config, no weights

    check_methods(req.backbone, [get_method_class(m) for m in dict.fromkeys(j.method for j in jobs)])
    if not req.dry_run:
        check_backbone(req.backbone, req.pretrained, req.weights)
    return settings, jobs, plan


def execute(req: RunRequest, console: Console, out: Console) -> list[dict]:
    """Validate, load the backbone once, run every job. A job that fails does not stop the others
    (unless the disk refuses writes); the run then ends with the first failure: a ``UserError``
    (exit 2) when every failure was one, else ``JobsFailed`` (exit 1). Ctrl-C/SIGTERM end it with
    an ``Interrupted`` that says what was saved."""
    from cpbench import threads

    settings, jobs, plan = validate(req)
    if req.dry_run or req.launcher != "none":
        from cpbench.launch import run as launch_run

        return launch_run(req, settings, jobs, console, out, plan)
    from cpbench.models.backbone import describe_weights, load_backbone
    from cpbench.progress import make_reporter
    from cpbench.protocols.execute import run_job, saved_progress
    from cpbench.results.store import ResultStore

    threads.apply(plan)
    console.print(f"loading backbone {req.backbone} ({describe_weights(req.backbone, req.pretrained, req.weights)}) "
                  f"on {settings.device}, {plan.describe()}", highlight=False, soft_wrap=True)
    backbone = load_backbone(req.backbone, req.pretrained, req.weights)
    store = ResultStore(settings.results_root)
    rows: list[dict] = []
    failed: list[tuple[object, BaseException]] = []
    finished = 0
    with make_reporter(console) as reporter:
        for i, job in enumerate(jobs, 1):
            reporter.job_started(job, i, len(jobs))
            try:
                got = run_job(job, backbone, settings, store, reporter)
            except Interrupted as exc:
                exc.saved = saved_progress(finished, len(jobs), job, settings)
                raise
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed job must not stop the others
                failed.append((job, exc))
                if len(jobs) > 1 or not isinstance(exc, UserError):  # a lone user error is the final line
                    reporter.job_failed(job, exc)
                continue
            finished += 1
            rows.extend(got or [])
    out.print(f"{len(rows)} new result row(s) in {store.root}", highlight=False)
    if failed:
        raise _failure(failed, len(jobs))
    return rows


def _failure(failed: list, total: int) -> Exception:
    job, first = failed[0]
    if total == 1 and isinstance(first, UserError):
        return first
    msg = (f"{len(failed)} of {total} job(s) failed (first: {job.describe()}: {first}); fix that and re-run "
           "the same command: finished jobs are kept and skipped")
    if all(isinstance(e, UserError) for _, e in failed):
        return UserError(msg)
    return JobsFailed(msg)


SUITE_KEYS = {"name", "description", "protocol", "methods", "datasets", "seeds", "shots", "source", "set"}


def load_suite(path: Path) -> dict:
    """A suite file (``benchmarks/*.yaml``): protocol, methods, datasets, seeds, shots, optional
    source (cross_dataset/dg) and ``set`` (``--set`` overrides). Every problem is one line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"suite file {path} not found; pass a YAML such as benchmarks/base2new.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"suite {path} is not valid YAML ({first}); fix the file")
    if not isinstance(data, dict):
        raise UserError(f"suite {path} must be a mapping with protocol:, methods:, datasets:, seeds:")
    unknown = sorted(set(data) - SUITE_KEYS)
    if unknown:
        raise UserError(f"suite {path}: unknown key(s) {', '.join(map(str, unknown))}; use {', '.join(sorted(SUITE_KEYS))}")
    protocol = data.get("protocol", "base2new")
    if protocol not in PROTOCOLS:
        raise UserError(f"suite {path}: unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")

    def strs(key):
        v = data.get(key) or []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise UserError(f"suite {path}: {key} must be a list of names")
        return v

    def ints(key, default):
        v = data.get(key, default)
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise UserError(f"suite {path}: {key} must be a list of integers")
        return v

    methods = strs("methods")
    if not methods:
        raise UserError(f"suite {path}: methods must list at least one method")
    source = data.get("source", "imagenet")
    if not isinstance(source, str) or not source:
        raise UserError(f"suite {path}: source must be a dataset name")
    return {"protocol": protocol, "methods": methods, "datasets": strs("datasets"), "seeds": ints("seeds", [1, 2, 3]),
            "shots": ints("shots", [16]), "source": source, "sets": strs("set")}
