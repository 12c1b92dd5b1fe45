"""The command line: parse, call one function per command, print. No logic lives here."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc
from rich.console import Console
from rich.table import Table

from cpbench.errors import Interrupted, JobsFailed, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible, fast CLIP prompt-learning benchmarks: prepare -> run -> report.")
console = Console(stderr=True)
out = Console()

# options that take several values: `--seeds 1 2 3` is expanded to `--seeds 1 --seeds 2 --seeds 3`
LIST_OPTIONS = {"--seeds", "--shots", "--dataset", "--datasets", "--set", "--methods", "--gpus-list", "--config-hash",
                "--compare-methods"}


def _expand_lists(argv: list[str]) -> list[str]:
    res, current = [], None
    for tok in argv:
        if tok in LIST_OPTIONS:
            current = tok
            res.append(tok)
            continue
        if current is not None and (not tok.startswith("-") or re.fullmatch(r"-\d+", tok)):
            if res[-1] != current:
                res.append(current)
            res.append(tok)
            continue
        current = None
        res.append(tok)
    return res


def _error_line(msg: str) -> None:
    from rich.markup import escape

    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")  # non-UTF-8 file names print escaped
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def _fail(msg: str) -> None:
    _error_line(msg)
    raise SystemExit(2)


# --------------------------------------------------------------------------- prepare


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="dataset name (see `cpbench list`), `toy` (all toy datasets), `all` "
                                            "(every downloadable one), or a new name with --from-folder/--csv"),
    shots: List[int] = typer.Option([], "--shots", help="few-shot sizes to pre-draw, e.g. --shots 1 2 4 8 16"),
    seeds: List[int] = typer.Option([1, 2, 3], "--seeds", help="seeds for the few-shot draws"),
    root: Optional[Path] = typer.Option(None, "--root", help="data root (default ./data or $CPBENCH_DATA); "
                                                            "an existing CoOp DATA folder works unchanged"),
    from_dir: Optional[Path] = typer.Option(None, "--from", help="folder holding the files the downloader would fetch"),
    force: bool = typer.Option(False, "--force", help="prepare again even if already prepared"),
    check: bool = typer.Option(False, "--check", help="verify an existing dataset: counts, missing and unreadable images"),
    from_folder: Optional[Path] = typer.Option(None, "--from-folder", help="your own data: one sub-folder per class"),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="your own data: a CSV of path,label"),
    classnames_file: Optional[Path] = typer.Option(None, "--classnames", help="class names, one a line (CSV integer labels)"),
    template: str = typer.Option("a photo of a {}.", "--template", help="prompt template of your own dataset"),
    split_file: Optional[Path] = typer.Option(None, "--split", help="a given CoOp-format split for your own data"),
    split_seed: int = typer.Option(1, "--split-seed", help="seed of the generated 50/20/30 split of your own data"),
) -> None:
    """Download (or take --from), verify, extract and split a dataset; draw few-shot files."""
    from cpbench.data import prepare as prep
    from cpbench.data.catalog import all_specs
    from cpbench.paths import data_root
    from cpbench.progress import ByteProgress

    root_path = data_root(root)
    prep.check_draws(shots, seeds)
    say = lambda m: console.print(f"[dim]{dataset}:[/] {m}", highlight=False)  # noqa: E731
    if from_folder is not None or csv_file is not None:
        from cpbench.data.custom import make_custom

        builtin = tuple(n for n, s in all_specs().items())
        spec = make_custom(dataset, root_path, from_folder, csv_file, classnames_file, template, split_file,
                           split_seed, builtin=builtin, shots=tuple(shots))
        ds, info = prep.prepare(dataset, root_path, shots=shots, seeds=seeds, force=True, say=say, spec=spec)
        _print_prepared(dataset, ds, info)
        return
    if dataset == "all":
        names = [n for n, s in all_specs().items() if s.kind == "download"]
    elif dataset == "toy":  # every dataset of the embedded toy world
        names = [n for n, s in all_specs().items() if s.kind == "generated"]
    else:
        names = [dataset]
    for name in names:
        prep.get_spec(name, root_path)
    if check:
        bad = 0
        for name in names:
            if dataset == "all" and not prep.is_prepared(prep.get_spec(name, root_path), root_path):
                continue
            r = prep.check(name, root_path)
            c = r["counts"]
            if r["ok"]:
                out.print(f"{name}: ok — {_counts_text(c)}", highlight=False)
                continue
            bad += 1
            for p in r["problems"]:
                out.print(f"{name}: {p}", highlight=False)
            for kind in ("missing", "unreadable"):
                for path in r[kind]:
                    out.print(f"{name}: {kind}: {path}", highlight=False)
        if bad:
            raise UserError(f"{bad} dataset(s) failed the check; run `cpbench prepare {dataset} --force` to repair")
        return
    failed = []
    for name in names:
        try:
            with ByteProgress(console) as bar:
                ds, info = prep.prepare(name, root_path, from_dir, shots, seeds, force=force,
                                        say=lambda m: console.print(f"[dim]{name}:[/] {m}", highlight=False),
                                        progress=bar)
        except UserError as exc:
            if len(names) == 1:
                raise
            failed.append(name)  # `all`: go on with the others, report at the end
            console.print(f"[red]{exc}[/]", highlight=False)
            continue
        _print_prepared(name, ds, info)
    if failed:
        raise UserError(f"{len(failed)} dataset(s) not prepared ({', '.join(failed)}); see the messages above")


def _counts_text(c: dict) -> str:
    if "captions" in c:  # an image-caption dataset
        return f"train {c['train']} / test {c['test']} images, {c['captions']} test captions"
    return f"train {c['train']} / val {c['val']} / test {c['test']}, {c['classes']} classes"


def _print_prepared(name, ds, info) -> None:
    c = info["counts"]
    state = "already prepared, verified" if info.get("skipped") else "prepared"
    base_new = f", base {c['base']} / new {c['new']}" if "base" in c else ""
    out.print(f"{name}: {state} in {ds.dir} — {_counts_text(c)}{base_new}", highlight=False)
    for key, (ntr, nva) in info.get("fewshot", {}).items():
        out.print(f"  {key}: train {ntr} / val {nva}", highlight=False)


# --------------------------------------------------------------------------- run


@app.command()
def run(
    method: Optional[str] = typer.Argument(None, help="method name (see `cpbench list`); optional with --suite"),
    dataset: List[str] = typer.Option([], "--dataset", "--datasets",
                                      help="datasets (base2new/few_shot: default every prepared one; cross_dataset/dg: the targets)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="base2new (default) | cross_dataset | dg | few_shot "
                                                                   "| continual | retrieval"),
    seeds: List[int] = typer.Option([], "--seeds", help="default 1 2 3"),
    shots: List[int] = typer.Option([], "--shots", help="default 16; few_shot: e.g. --shots 1 2 4 8 16; "
                                                         "retrieval: training image-caption pairs"),
    tasks: int = typer.Option(2, "--tasks", help="continual: number of tasks the classes are split into (2 = base, new)"),
    class_order: str = typer.Option("labels", "--class-order", help="continual: `labels` (label order) or an "
                                                                     "integer seed of a shuffled order"),
    source: Optional[str] = typer.Option(None, "--source", help="cross_dataset/dg: training dataset (default imagenet)"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="run a suite file, e.g. benchmarks/base2new.yaml"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="open_clip model name, `toy`, or local-dir:PATH "
                                                                    "(default ViT-B-16; with --from-export the file's)"),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag (default openai; toy: embedded; tiny: none); "
                                                                        "`none` = random weights"),
    weights: Optional[str] = typer.Option(None, "--weights", help="local checkpoint for the backbone"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with train:/method: overrides"),
    sets: List[str] = typer.Option([], "--set", help="override, e.g. --set epochs=1 lr=0.01"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads: auto (default: the CPUs this process "
                                          "may use) or a number; also $CPBENCH_THREADS"),
    results: Optional[Path] = typer.Option(None, "--results", help="results dir (default ./results or $CPBENCH_RESULTS)"),
    root: Optional[Path] = typer.Option(None, "--root", help="data root (default ./data or $CPBENCH_DATA)"),
    force: bool = typer.Option(False, "--force", help="re-run jobs whose rows already exist"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not use cached frozen image features"),
    launcher: str = typer.Option("none", "--launcher", help="none (here) | local (one worker per GPU) | slurm (submitit)"),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="--launcher local: GPUs, one worker each, e.g. 0,1,2,3"),
    jobs_per_gpu: int = typer.Option(1, "--jobs-per-gpu", help="--launcher local: workers (jobs at once) per GPU"),
    gpu_headroom: float = typer.Option(2.0, "--gpu-headroom",
                                       help="--launcher local: GiB free on a shared GPU before a worker starts a job"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the jobs (done/todo) without running them"),
    partition: Optional[str] = typer.Option(None, "--partition", help="--launcher slurm: partition"),
    time_limit: str = typer.Option("4:00", "--time", help="--launcher slurm: time limit per job, minutes or h:mm"),
    gpus_per_job: int = typer.Option(1, "--gpus-per-job", help="--launcher slurm: GPUs per array task"),
    cpus_per_job: int = typer.Option(8, "--cpus-per-job", help="--launcher slurm: CPUs per array task"),
    array_parallelism: int = typer.Option(64, "--array-parallelism", help="--launcher slurm: tasks running at once"),
    account: Optional[str] = typer.Option(None, "--account", help="--launcher slurm: account"),
    from_official: Optional[Path] = typer.Option(None, "--from-official",
                                                 help="evaluate the authors' released checkpoints under this folder "
                                                      "instead of training (model.pth.tar-<epoch> per dataset/seed)"),
    from_export: Optional[Path] = typer.Option(None, "--from-export", help="evaluate the prompts of an export file "
                                               "instead of training (rows marked imported)"),
) -> None:
    """Train and evaluate METHOD under a protocol; one Parquet row per evaluation."""
    from cpbench.runner import RunRequest, execute

    if from_export is not None and from_official is not None:
        raise UserError("--from-export and --from-official each give the learned state; pass one")
    state_from = f"official:{from_official.expanduser().resolve()}" if from_official is not None else None
    if from_export is not None:  # the file's method, protocol, seed, shots, dataset and backbone by default
        from cpbench.export import run_defaults

        if suite is not None:
            raise UserError("--from-export evaluates one file; drop --suite")
        d = run_defaults(from_export)
        method, protocol = method or d["method"], protocol or d["protocol"]
        seeds, shots = list(seeds) or d["seeds"], list(shots) or d["shots"]
        if protocol in ("cross_dataset", "dg"):
            source = source or d["dataset"]
        elif not dataset and d["dataset"]:
            dataset = [d["dataset"]]
        backbone, pretrained = backbone or d["backbone"], pretrained or d["pretrained"]
        state_from = f"export:{from_export.expanduser().resolve()}"
    from cpbench.models.pretrained import default_pretrained

    backbone = backbone or "ViT-B-16"
    pretrained = pretrained or default_pretrained(backbone)
    slurm = {}
    if launcher == "slurm":
        from cpbench.launch.slurm import parse_time

        slurm = dict(partition=partition, time_min=parse_time(time_limit), gpus_per_job=gpus_per_job,
                     cpus_per_job=cpus_per_job, array_parallelism=array_parallelism, account=account)
    common = dict(backbone=backbone, pretrained=pretrained, weights=weights,
                  config_file=str(config) if config else None, device=device,
                  results=results, root=root, force=force, feature_cache=not no_cache,
                  launcher=launcher, gpus=gpus, jobs_per_gpu=jobs_per_gpu, gpu_headroom=gpu_headroom,
                  dry_run=dry_run, slurm=slurm, threads=threads, state_from=state_from, tasks=tasks,
                  class_order=class_order)
    if suite is None:
        if not method:
            raise UserError("missing METHOD; run `cpbench run METHOD` or `cpbench run --suite FILE`")
        req = RunRequest(method=method, datasets=list(dataset), protocol=protocol or "base2new",
                         seeds=list(seeds) or [1, 2, 3], shots=list(shots) or [16], source=source or "imagenet",
                         sets=list(sets), **common)
        execute(req, console, out)
        return
    from cpbench.runner import load_suite

    st = load_suite(suite)  # command-line values, where given, override the suite's
    methods = [method] if method else st["methods"]
    reqs = [RunRequest(method=m, datasets=list(dataset) or st["datasets"], protocol=protocol or st["protocol"],
                       seeds=list(seeds) or st["seeds"], shots=list(shots) or st["shots"],
                       source=source or st["source"], sets=st["sets"] + list(sets), **common) for m in methods]
    for r in reqs:  # validate every method before running any
        from cpbench.methods.registry import get_method_class

        get_method_class(r.method)
    for r in reqs:
        execute(r, console, out)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    format: str = typer.Option("markdown", "--format", help="markdown | csv | latex | html | json"),
    results: Optional[Path] = typer.Option(None, "--results", help="results dir"),
    std: bool = typer.Option(True, "--std/--no-std", help="show the std over seeds"),
    protocol: List[str] = typer.Option([], "--protocol", help="only these protocols (base2new cross_dataset dg few_shot "
                                                              "continual retrieval)"),
    methods: List[str] = typer.Option([], "--methods", help="only these methods"),
    datasets: List[str] = typer.Option([], "--datasets", "--dataset", help="only these datasets"),
    config_hash: List[str] = typer.Option([], "--config-hash", help="keep only the configurations whose config hash "
                                                                    "starts with PREFIX (for their methods; other "
                                                                    "methods stay)"),
    latest: bool = typer.Option(False, "--latest", help="keep only the most recent configuration of each method "
                                                        "(per protocol)"),
    layout: str = typer.Option("auto", "--layout", help="base-to-new tables: wide (datasets x methods) | long "
                                                        "(one row per dataset and method) | auto (long when wide)"),
    compare: Optional[str] = typer.Option(None, "--compare", help="paper: add published numbers of the same setting "
                                                                  "(with provenance) and deltas"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="also write PNG figures into this folder"),
    curves: Optional[Path] = typer.Option(None, "--curves", help="also plot the training curves (loss, train "
                                          "accuracy, lr per epoch) as PNGs into this folder"),
    ci: bool = typer.Option(False, "--ci", help="95% bootstrap interval on every cell (over seeds and test images; "
                                                "needs the per-image predictions `run` stores)"),
    compare_methods: List[str] = typer.Option([], "--compare-methods", help="A B: the paired difference A - B per "
                                              "dataset and Average, with interval and tests (give both: "
                                              "--compare-methods coop zeroshot)"),
    per_class: Optional[str] = typer.Option(None, "--per-class", help="DATASET: per-class accuracy, the classes where "
                                            "methods differ most and top confusions (PNG with --plots)"),
    cost: bool = typer.Option(False, "--cost", help="per method: learnable parameters, train and eval seconds, peak "
                                                    "memory, device, precision"),
) -> None:
    """Tables per protocol in the papers' layouts (mean ± std over seeds, HM rules of the papers);
    different methods, backbones and configurations never share a cell."""
    from cpbench.paths import results_root
    from cpbench.results import formats
    from cpbench.results import report as rep
    from cpbench.results.store import ResultStore

    if format not in formats.FORMATS:
        raise UserError(f"--format must be one of {', '.join(formats.FORMATS)}, got {format!r}")
    if compare not in (None, "paper"):
        raise UserError(f"--compare takes `paper`, got {compare!r}")
    if layout not in rep.LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(rep.LAYOUTS)}, got {layout!r}")
    bad = [p for p in protocol if p not in rep.PROTOCOL_ORDER]
    if bad:
        raise UserError(f"unknown protocol {bad[0]!r} in --protocol; use {', '.join(rep.PROTOCOL_ORDER)}")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UserError(f"--plots {plots} is a file; pass a folder (it is created if missing)")
    if curves is not None:
        from cpbench.results.curves import write_curve_plots

        warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
        for p in write_curve_plots(results_root(results), curves, methods, datasets, warn=warn):
            console.print(f"wrote {p}", highlight=False, soft_wrap=True)
    store = ResultStore(results_root(results))
    read = store.read()
    for path in read.corrupt:
        console.print(f"[yellow]warning:[/] skipped unreadable results shard {path} (delete it and re-run its job)",
                      highlight=False, soft_wrap=True)
    if read.frame.empty:
        raise UserError(f"no results under {store.root}; run `cpbench run METHOD` first (or pass --results DIR)")
    from cpbench.results import predictions

    built = rep.build(read.frame, rep.ReportOptions(protocol, methods, datasets, config_hash, latest, layout,
                                                    compare == "paper", ci=ci, compare_methods=tuple(compare_methods),
                                                    per_class=per_class or "", cost=cost),
                      outcomes=lambda keys: predictions.read(store.root, keys))
    if plots is not None:
        try:
            from cpbench.results.plots import write_plots

            made = write_plots(built.tables, plots)
        except ModuleNotFoundError as exc:
            raise UserError(f"--plots needs {exc.name}; pip install matplotlib")
        for p in made:
            console.print(f"wrote {p}", highlight=False)
    if format == "csv":  # csv has no place for the notes
        for note in built.notes:
            console.print(note, highlight=False, soft_wrap=True, markup=False)
    if per_class and plots is None:
        console.print("--per-class: add --plots DIR for the PNG", highlight=False, soft_wrap=True)
    page_curves = None
    if format == "html":  # the leaderboard page embeds the training curves where histories exist
        from cpbench.results.curves import read_curves

        page_curves = read_curves(store.root)
        if methods:
            page_curves = page_curves[page_curves["method"].isin(list(methods))]
    sys.stdout.write(formats.render(built, format, std, page_curves))


# --------------------------------------------------------------------------- export / predict


@app.command("export")
def export_(
    method: Optional[str] = typer.Argument(None, help="method name (optional with --checkpoint)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="the training dataset (cross_dataset/dg: the source)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="the job's seed"),
    shots: Optional[int] = typer.Option(None, "--shots", help="the job's shots, where several were trained"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="the job's backbone, where several were used"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="the job's protocol, where several were run"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="select the job by its checkpoint folder "
                                              "(RESULTS/checkpoints/<job>)"),
    out: Path = typer.Option(..., "--out", help="the file to write, e.g. prompts.safetensors"),
    results: Optional[Path] = typer.Option(None, "--results", help="results dir (default ./results or $CPBENCH_RESULTS)"),
    root: Optional[Path] = typer.Option(None, "--root", help="data root (default ./data or $CPBENCH_DATA)"),
    device: str = typer.Option("cpu", "--device", help="where to compute the text features: cpu | auto | cuda[:N]"),
) -> None:
    """Write one trained job's learned prompts as one self-describing safetensors file."""
    from cpbench import export_job
    from cpbench.api import describe
    from cpbench.paths import data_root, results_root

    t = export_job.find(results_root(results), data_root(root), method, dataset, seed, shots, backbone, protocol,
                        checkpoint)
    meta = export_job.export(t, out, device)
    extra = ", with text features" if meta["text_features"] else ""
    out_ = f"wrote {out} ({out.stat().st_size / 1024:.1f} kB): {meta['method']} {describe(meta)}, "
    console.print(out_ + f"{len(meta['classnames'])} classes{extra}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    prompts: Path = typer.Option(..., "--prompts", help="an export file (`cpbench export`)"),
    top_k: int = typer.Option(5, "--top-k", help="classes per image"),
    classes: Optional[Path] = typer.Option(None, "--classes", help="class names, one a line, instead of the trained ones"),
    format: str = typer.Option("text", "--format", help="text | csv | json"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="default: the file's (local-dir:PATH for a moved folder)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="the local checkpoint, for files learned on one"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
) -> None:
    """The top-k classes of images under learned prompts."""
    from cpbench.predict import run as run_predict

    sys.stdout.write(run_predict(prompts, list(images), top_k, classes, format, backbone, weights, device))


# --------------------------------------------------------------------------- list


@app.command("list")
def list_(root: Optional[Path] = typer.Option(None, "--root", help="data root"),
          backbones: bool = typer.Option(False, "--backbones", help="open_clip's models by family, with the "
                                         "methods each runs")) -> None:
    """Datasets (and which are prepared), methods and backbones."""
    from cpbench.data import prepare as prep
    from cpbench.data.catalog import all_specs
    from cpbench.methods.registry import get_method_class, method_names
    from cpbench.paths import data_root

    if backbones:
        from cpbench.models.families import table

        t = Table(title="open_clip backbones by family (--backbone NAME; also toy, tiny, local-dir:PATH)")
        for col in ("family", "models", "text tower", "image tower", "methods"):
            t.add_column(col)
        for r in table({m: get_method_class(m) for m in method_names()}):
            t.add_row(r["family"], ", ".join(r["models"]), r["text"], r["image"], r["methods"])
        out.print(t)
        return
    root_path = data_root(root)
    t = Table(title=f"datasets (root: {root_path})")
    for col in ("name", "prepared", "classes", "images", "disk", "template"):
        t.add_column(col)
    for name, spec in all_specs(root_path).items():
        ddir = prep.dataset_dir(spec, root_path)
        ready = prep.is_prepared(spec, root_path)
        images = disk = classes = ""
        if ready:
            info = prep.read_marker(ddir)
            c = info.get("counts", {})
            classes = str(c.get("classes", ""))
            images = str(sum(c.get(k, 0) for k in ("train", "val", "test")))
            disk = info.get("disk") or prep.human_size(prep.disk_usage(ddir))
        t.add_row(name, "yes" if ready else "", classes or (str(spec.expected.classes or "")), images, disk, spec.template)
    out.print(t)
    out.print("methods: " + ", ".join(method_names()))
    out.print("backbones: toy (embedded, offline), ViT-B-16 (default, --pretrained openai), open_clip model names "
              "(by family, with the methods each runs: cpbench list --backbones), local-dir:PATH; --weights PATH for a "
              "local checkpoint")


def main() -> None:
    """Exit codes scripts can trust, whatever typer's version: 0 everything asked for finished,
    1 a job failed (after the others ran) or a bug, 2 a user error, 130/143 interrupted by
    SIGINT/SIGTERM (after one line saying what was saved and how to resume)."""
    from cpbench.interrupts import raise_on_signals
    from cpbench.threads import prefer_passive_wait

    prefer_passive_wait()  # before torch is imported (cpbench/threads.py)
    argv = _expand_lists(sys.argv[1:])
    code = 0
    with raise_on_signals():
        try:
            rc = app(args=argv, prog_name="cpbench", standalone_mode=False)
            code = rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
            if code == 130:  # typer >= 0.2x returns a KeyboardInterrupt as Exit(130)
                console.print(Interrupted().line(), highlight=False)
        except UserError as exc:
            _fail(str(exc))
        except JobsFailed as exc:
            _error_line(str(exc))
            code = exc.exit_code
        except Interrupted as exc:
            console.print(exc.line(), highlight=False, soft_wrap=True)
            code = exc.exit_code
        except getattr(click_exc, "NoArgsIsHelpError", ()):
            code = 0
        except click_exc.UsageError as exc:
            hint = f" (see `cpbench {exc.ctx.info_name} --help`)" if exc.ctx and exc.ctx.info_name != "cpbench" else " (see `cpbench --help`)"
            _fail(exc.format_message() + hint)
        except typer.Abort as exc:
            # typer/click turn KeyboardInterrupt and EOFError into Abort; only the first is an interrupt
            cause = exc.__cause__ or exc.__context__
            if cause is not None and not isinstance(cause, KeyboardInterrupt):
                raise cause from None  # an EOFError nobody expected: a bug, with its traceback
            console.print(Interrupted().line(), highlight=False)
            code = 130
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
