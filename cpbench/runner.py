"""``cpbench run``: validate everything first (nothing is written on a bad input), load the
backbone once, plan the protocol's jobs and execute them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from cpbench.errors import Interrupted, JobsFailed, StorageError, UserError
from cpbench.protocols import registry

if TYPE_CHECKING:
    from cpbench.protocols.jobs import PlanRequest, RunSettings
    from cpbench.threads import ThreadPlan


@dataclass
class RunRequest:
    method: str
    datasets: list[str] = field(default_factory=list)
    protocol: str = registry.DEFAULT
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
    # learned state imported instead of trained: "official:DIR" | "export:FILE" (cpbench/state/imports.py)
    state_from: str | None = None
    # CPU threads: a number or "auto" (cpbench/threads.py); None = $CPBENCH_THREADS / auto
    threads: str | None = None
    # continual: the number of tasks and the class order ("labels" or an integer seed)
    tasks: int = 2
    class_order: str = "labels"
    # --tensorboard DIR: one TensorBoard run per training key (cpbench/results/tensorboard.py)
    tensorboard: Path | None = None

    def plan_request(self) -> PlanRequest:
        from cpbench.protocols.jobs import PlanRequest

        return PlanRequest(self.method, self.protocol, tuple(self.seeds), tuple(self.shots), self.source, self.tasks,
                           self.class_order)


@dataclass
class Given:
    """What ``cpbench run`` was given of the settings that a suite (``--suite``) or an export file
    (``--from-export``) also give: None / empty = not given."""
    method: str | None = None
    datasets: list[str] = field(default_factory=list)
    protocol: str | None = None
    seeds: list[int] = field(default_factory=list)
    shots: list[int] = field(default_factory=list)
    source: str | None = None
    backbone: str | None = None
    pretrained: str | None = None
    sets: list[str] = field(default_factory=list)
    suite: Path | None = None
    from_official: Path | None = None
    from_export: Path | None = None


def requests(given: Given, template: RunRequest) -> list[RunRequest]:
    """The runs of one ``cpbench run``: ``template`` holds the options taken as they are (paths,
    device, launcher, ...), ``given`` the others. What is not given comes from the export file
    (``--from-export``: its method, protocol, seed, shots, dataset and backbone), else from the suite
    (one run per method; command-line values override the suite's), else the defaults."""
    from dataclasses import replace

    g = replace(given, datasets=list(given.datasets), seeds=list(given.seeds), shots=list(given.shots),
                sets=list(given.sets))
    if g.from_export is not None and g.from_official is not None:
        raise UserError("--from-export and --from-official each give the learned state; pass one")
    state_from = f"official:{g.from_official.expanduser().resolve()}" if g.from_official is not None else None
    if g.from_export is not None:
        from cpbench.state.export import run_defaults

        if g.suite is not None:
            raise UserError("--from-export evaluates one file; drop --suite")
        d = run_defaults(g.from_export)
        g.method, g.protocol = g.method or d["method"], g.protocol or d["protocol"]
        g.seeds, g.shots = g.seeds or d["seeds"], g.shots or d["shots"]
        trained_on = registry.PROTOCOLS.get(g.protocol)
        if trained_on is not None and trained_on.trains_on_source:
            g.source = g.source or d["dataset"]
        elif not g.datasets and d["dataset"]:
            g.datasets = [d["dataset"]]
        g.backbone, g.pretrained = g.backbone or d["backbone"], g.pretrained or d["pretrained"]
        state_from = f"export:{g.from_export.expanduser().resolve()}"
    from cpbench.models.pretrained import default_pretrained

    backbone = g.backbone or "ViT-B-16"
    common = replace(template, backbone=backbone, pretrained=g.pretrained or default_pretrained(backbone),
                     state_from=state_from)
    if g.suite is None:
        if not g.method:
            raise UserError("missing METHOD; run `cpbench run METHOD` or `cpbench run --suite FILE`")
        return [replace(common, method=g.method, datasets=g.datasets, protocol=g.protocol or registry.DEFAULT,
                        seeds=g.seeds or [1, 2, 3], shots=g.shots or [16], source=g.source or "imagenet", sets=g.sets)]
    st = load_suite(g.suite)  # command-line values, where given, override the suite's
    reqs = [replace(common, method=m, datasets=g.datasets or st["datasets"], protocol=g.protocol or st["protocol"],
                    seeds=g.seeds or st["seeds"], shots=g.shots or st["shots"], source=g.source or st["source"],
                    sets=st["sets"] + g.sets) for m in ([g.method] if g.method else st["methods"])]
    from cpbench.methods.registry import check_method_name

    for r in reqs:  # every method is known before any runs
        check_method_name(r.method)
    return reqs


def run_command(given: Given, template: RunRequest, console: Console, out: Console) -> None:
    """``cpbench run``: every run of ``requests(given, template)``, one after another."""
    for req in requests(given, template):
        execute(req, console, out)


def plan_jobs(req: RunRequest, datasets: list[str]) -> list:
    """The protocol's jobs: ``datasets`` are trained and evaluated, or evaluated only (targets) for a
    protocol that trains on ``req.source`` (``registry.Protocol.trains_on_source``)."""
    return registry.module(req.protocol).plan_jobs(req.plan_request(), datasets)


def _check_datasets(req: RunRequest, root: Path, datasets: list[str]) -> None:
    """Every dataset is prepared and has >= 2 classes (a new half for base2new); every training
    dataset has ``--shots`` images in each of its training classes. Split files only: cheap."""
    from cpbench.data import checks
    from cpbench.data import prepare as prep

    protocol = registry.get(req.protocol)
    trained = [req.source] if protocol.trains_on_source else datasets
    for d in dict.fromkeys([*trained, *datasets]):
        ds = prep.load(d, root)  # unknown or unprepared -> one clear line
        checks.require_classes(ds.name, ds.split, trained=d in trained)
        if d in trained and not req.state_from:  # imported state is not trained here
            checks.require_shots(ds.name, ds.split, req.shots, protocol.train_subset)
            ds.check_fewshot(req.shots, req.seeds)


def _usable_defaults(req: RunRequest, root: Path, datasets: list[str]) -> tuple[list[str], list[str]]:
    """Without ``--dataset``: the prepared datasets that can take this run, and a note for each one
    left out and why (one small dataset must not refuse the whole run)."""
    from cpbench.data import prepare as prep

    keep, notes = [], []
    for d in datasets:
        try:
            if registry.get(req.protocol).tasks and not 2 <= req.tasks <= len(prep.load(d, root).split.classnames):
                raise UserError(f"it has fewer than --tasks {req.tasks} classes")
            _check_datasets(req, root, [d])
        except UserError as exc:
            notes.append(f"skipped {d} (left out of a run without --dataset): {exc}")
            continue
        keep.append(d)
    return keep, notes


def _check_request(req: RunRequest, protocol: registry.Protocol) -> None:
    """What the protocol's registry line says it takes (no dataset read, no import)."""
    if protocol.one_shots and len(req.shots) != 1:
        raise UserError(f"{req.protocol} takes one --shots value (16 in the papers); "
                        "use --protocol few_shot for several")
    if req.state_from and protocol.own_runner:
        raise UserError(f"--protocol {req.protocol} trains its own state; it cannot start from imported state")


def validate(req: RunRequest) -> tuple[RunSettings, list, ThreadPlan, list[str]]:
    """Every check that needs no model: a bad input fails here, before anything is loaded or written.
    Also returns the notes to print (datasets left out of a run without ``--dataset``)."""
    # the cheap checks (names, numbers, prepared datasets) come before anything that imports torch,
    # so a typo costs about a second, not the ~6 s of torch + torchvision imports
    from cpbench import threads
    from cpbench.data import catalog
    from cpbench.data import prepare as prep
    from cpbench.methods.registry import check_method_name
    from cpbench.paths import check_cache, check_folder, chosen_by, data_root, results_root

    check_method_name(req.method)
    if req.tensorboard is not None:  # the package and the folder, before anything loads
        from cpbench.results.tensorboard import check as check_tensorboard

        check_tensorboard(req.tensorboard)
    if req.launcher not in ("none", "local", "slurm"):
        raise UserError(f"unknown launcher {req.launcher!r}; use none, local or slurm")
    protocol = registry.get(req.protocol)
    prep.check_draws(req.shots, req.seeds)
    if not req.seeds:
        raise UserError("--seeds needs at least one seed")
    _check_request(req, protocol)
    from cpbench.models.families import widest_tower

    # before torch loads: OpenMP reads its waiting policy once (cpbench/threads.py)
    plan = threads.decide(req.threads, widest_tower(req.backbone),
                          here=req.launcher == "none" and not req.dry_run and threads.likely_cpu(req.device))
    root = data_root(req.root)
    datasets = (list(dict.fromkeys(req.datasets))
                or registry.module(req.protocol).default_targets(catalog.prepared_names(root, protocol.task)))
    notes: list[str] = []
    if not req.datasets and protocol.task != "retrieval" and not protocol.trains_on_source:
        datasets, notes = _usable_defaults(req, root, datasets)
        if not datasets and notes:
            raise UserError("no prepared dataset can take this run: " + "; ".join(n.split(": ", 1)[1] for n in notes))
    if not datasets:
        what = "image-caption datasets" if protocol.task == "retrieval" else "datasets"
        by = chosen_by(root, "--root", "CPBENCH_DATA")
        raise UserError(f"no prepared {what} under {root} (the data root {by} names); run "
                        f"`cpbench prepare DATASET --root {root}` first, or point {by} at your data root")
    if protocol.task == "retrieval":
        from cpbench.data import captions

        for d in datasets:  # unknown or unprepared -> one clear line
            cds = captions.load(d, root)
            pool = len(cds.split.train)
            for k in req.shots:
                if k > pool:
                    raise UserError(f"--shots for retrieval is the number of training image-caption pairs: 1 to "
                                    f"{pool} for {d}, got {k}")
                for seed in req.seeds:  # a damaged pairs file is named now, not after the backbone loads
                    cds.pairs(k, seed)
    else:
        if protocol.tasks:
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
                           feature_cache=req.feature_cache, state_from=req.state_from,
                           tensorboard=req.tensorboard)
    check_folder(settings.results_root, chosen_by(settings.results_root, "--results", "CPBENCH_RESULTS"))
    if req.feature_cache and not req.dry_run:
        check_cache()
    jobs = plan_jobs(req, datasets)
    if req.state_from:  # an imported state that does not fit this run fails before the backbone loads
        from cpbench.state import imports

        imports.check(req.state_from, req, jobs, root)
    for job in jobs:
        cfg = job_config(job, settings)  # bad --set / --config fail before any work
        cls = get_method_class(job.method)
        why = cls.unsupported(job.protocol, cfg.options)
        if why:
            raise UserError(why)
        if cls.trainable and not cls.closed_form and not req.state_from and cfg.train.epochs <= 0 \
                and not cfg.train.iterations:
            raise UserError(f"{job.method} learns its parameters by training, and 0 epochs would write its untrained "
                            "start under its name; set epochs to 1 or more (the method zeroshot is the untrained model)")
    from cpbench.models.families import check_methods   # e.g. maple on a ResNet: from the model config, no weights

    check_methods(req.backbone, [get_method_class(m) for m in dict.fromkeys(j.method for j in jobs)])
    if not req.dry_run:
        check_backbone(req.backbone, req.pretrained, req.weights)
    return settings, jobs, plan, notes


def execute(req: RunRequest, console: Console, out: Console) -> list[dict]:
    """Validate, load the backbone once, run every job. A job that fails does not stop the others
    (unless the disk refuses writes); the run then ends with the first failure: a ``UserError``
    (exit 2) when every failure was one, else ``JobsFailed`` (exit 1). Ctrl-C/SIGTERM end it with
    an ``Interrupted`` that says what was saved."""
    from cpbench import threads

    settings, jobs, plan, notes = validate(req)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    if not req.state_from and registry.get(req.protocol).task == "classification":
        from cpbench.data.prepare import dassl_fewshot_note

        note = dassl_fewshot_note(settings.data_root, dict.fromkeys(j.train_dataset for j in jobs),
                                  sorted({j.shots for j in jobs}), sorted({j.seed for j in jobs}))
        if note:  # said once per run, before anything loads
            console.print(note, highlight=False, soft_wrap=True)
    if req.dry_run or req.launcher != "none":
        from cpbench.launch import run as launch_run

        return launch_run(req, settings, jobs, console, out, plan)
    from cpbench.models.backbone import describe_weights, load_backbone
    from cpbench.ui.progress import make_reporter
    from cpbench.protocols.execute import run_job, saved_progress
    from cpbench.results.store import ResultStore

    threads.apply(plan)
    console.print(f"loading backbone {req.backbone} ({describe_weights(req.backbone, req.pretrained, req.weights)}) "
                  f"on {settings.device}, {plan.describe()}", highlight=False, soft_wrap=True)
    backbone = load_backbone(req.backbone, req.pretrained, req.weights)
    if registry.get(req.protocol).task == "retrieval":  # captions the context cuts: said once per run
        from cpbench.protocols.retrieval import long_caption_note

        note = long_caption_note(jobs, backbone, settings)
        if note:
            console.print(note, highlight=False, soft_wrap=True)
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
    protocol = data.get("protocol", registry.DEFAULT)
    registry.check_protocol_name(protocol, f"suite {path}: ")

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
