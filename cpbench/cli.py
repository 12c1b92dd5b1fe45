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
from rich.table import Table

from cpbench.errors import Interrupted, JobsFailed, UserError
from cpbench.protocols.registry import DEFAULT as DEFAULT_PROTOCOL
from cpbench.protocols.registry import protocol_names
from cpbench.ui.consoles import Output

PROTOCOLS = protocol_names()


def _flags_as_flags(params: list, help_option=None) -> None:
    """typer shows every option's type, so a flag read `--force <bool>` though `--force true` is refused:
    an empty metavar leaves flags (and --help) bare in the help text."""
    for p in [*params, help_option]:
        if p is not None and getattr(p, "is_flag", False) and not getattr(p, "count", False):
            p.metavar = ""


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx):  # the top-level `cpbench --help`
        params = super().get_params(ctx)
        _flags_as_flags(params)
        return params

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _flags_as_flags(cmd.params, cmd.get_help_option(ctx))
        return cmd


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible, fast CLIP prompt-learning benchmarks: prepare -> run -> report.")
console = Output(stderr=True)  # piped: nothing wrapped or truncated (cpbench/ui/consoles.py)
out = Output()

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
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="your own data: leave out (and count) files "
                                         "that do not decode as images, instead of refusing them"),
) -> None:
    """Download (or take --from), verify, extract and split a dataset; draw few-shot files."""
    from cpbench.data import prepare as prep
    from cpbench.paths import data_root
    from cpbench.ui.progress import ByteProgress

    own = (prep.OwnData(from_folder, csv_file, classnames_file, template, split_file, split_seed, skip_bad_images)
           if from_folder is not None or csv_file is not None else None)
    prep.prepare_datasets(dataset, data_root(root), from_dir, shots, seeds, force, check, own,
                          say=lambda name, m: console.print(f"[dim]{name}:[/] {m}", highlight=False),
                          show=_show, warn=lambda m: console.print(f"[red]{m}[/]", highlight=False),
                          progress=lambda: ByteProgress(console))


def _show(line: str) -> None:
    out.print(line, highlight=False)


# --------------------------------------------------------------------------- run


@app.command()
def run(
    method: Optional[str] = typer.Argument(None, help="method name (see `cpbench list`); optional with --suite"),
    dataset: List[str] = typer.Option([], "--dataset", "--datasets",
                                      help="datasets (base2new/few_shot: default every prepared one; cross_dataset/dg: the targets)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=" | ".join(
                                               f"{p} (default)" if p == DEFAULT_PROTOCOL else p for p in PROTOCOLS)),
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
    no_cache: bool = typer.Option(False, "--no-cache", help="do not use the cache of frozen image features (test views, training views)"),
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
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="also write each training's per-epoch "
                                               "scalars and final accuracies as TensorBoard runs into this folder "
                                               "(needs `pip install tensorboard`)"),
) -> None:
    """Train and evaluate METHOD under a protocol; one Parquet row per evaluation."""
    from cpbench.launch import slurm
    from cpbench.runner import Given, RunRequest, run_command

    template = RunRequest(method="", weights=weights, config_file=str(config) if config else None, device=device,
                          results=results, root=root, force=force, feature_cache=not no_cache, launcher=launcher,
                          gpus=gpus, jobs_per_gpu=jobs_per_gpu, gpu_headroom=gpu_headroom, dry_run=dry_run,
                          slurm=slurm.options(launcher, partition, time_limit, gpus_per_job, cpus_per_job,
                                              array_parallelism, account),
                          threads=threads, tasks=tasks, class_order=class_order, tensorboard=tensorboard)
    run_command(Given(method, list(dataset), protocol, list(seeds), list(shots), source, backbone, pretrained,
                      list(sets), suite, from_official, from_export), template, console, out)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    format: str = typer.Option("markdown", "--format", help="markdown | csv | latex | html | json"),
    results: Optional[Path] = typer.Option(None, "--results", help="results dir"),
    std: bool = typer.Option(True, "--std/--no-std", help="show the std over seeds"),
    protocol: List[str] = typer.Option([], "--protocol", help=f"only these protocols ({' '.join(PROTOCOLS)})"),
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
    from cpbench.results import report as rep

    opts = rep.ReportOptions(protocol, methods, datasets, config_hash, latest, layout, ci=ci,
                             compare_methods=tuple(compare_methods), per_class=per_class or "", cost=cost)
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    say = lambda m: console.print(m, highlight=False, soft_wrap=True, markup=False)  # noqa: E731
    sys.stdout.write(rep.command(results_root(results), opts, format, std, compare, plots, curves, say=say, warn=warn))


@app.command("import-logs")
def import_logs(
    folder: Path = typer.Argument(..., help="output folder of the official CoOp/CoCoOp/MaPLe/PromptSRC/KgCoOp/LAMM/"
                                            "Bayesian PL scripts (log.txt per seed folder)"),
    results: Optional[Path] = typer.Option(None, "--results", help="results dir (default ./results or $CPBENCH_RESULTS)"),
) -> None:
    """Read the accuracies of the official scripts' Dassl logs into results rows (marked imported)."""
    from rich.markup import escape

    from cpbench.paths import results_root
    from cpbench.state import dassl_logs

    warn = lambda m: console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False, soft_wrap=True)  # noqa: E731
    console.print(dassl_logs.command(folder, results_root(results), warn), highlight=False, soft_wrap=True,
                  markup=False)


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
    from cpbench.paths import data_root, results_root
    from cpbench.state import export_job

    console.print(export_job.command(results_root(results), data_root(root), out, method, dataset, seed, shots, backbone,
                                     protocol, checkpoint, device), highlight=False, soft_wrap=True)


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
    from cpbench.ui.predict import run as run_predict

    sys.stdout.write(run_predict(prompts, list(images), top_k, classes, format, backbone, weights, device))


# --------------------------------------------------------------------------- list


@app.command("cache")
def cache_(action: Optional[str] = typer.Argument(None, help="nothing: show sizes; `clear`: delete"),
           kind: str = typer.Option("all", "--kind", help="clear: views | features | all"),
           max_size: Optional[str] = typer.Option(None, "--max-size", help="size cap, e.g. 50G (`none` removes it); "
                                                  "least recently used files go first; also $CPBENCH_CACHE_MAX")) -> None:
    """The derived-file cache (test-view features, the training-view store): show, cap, clear."""
    from cpbench.ui.cache import cache_command

    cache_command(action, kind, max_size, out)


@app.command("list")
def list_(root: Optional[Path] = typer.Option(None, "--root", help="data root"),
          backbones: bool = typer.Option(False, "--backbones", help="open_clip's models by family, with the "
                                         "methods each runs")) -> None:
    """Datasets (and which are prepared), methods and backbones."""
    from cpbench.data import catalog
    from cpbench.methods.registry import get_method_class, method_names
    from cpbench.paths import data_root

    if backbones:
        from cpbench.models.families import table

        out.print("open_clip backbones by family (--backbone NAME; also toy, tiny, local-dir:PATH)", highlight=False)
        t = Table()  # (a table's title would wrap to the table's width)
        for col in ("family", "models", "text tower", "image tower", "methods"):
            t.add_column(col)
        for r in table({m: get_method_class(m) for m in method_names()}):
            t.add_row(r["family"], ", ".join(r["models"]), r["text"], r["image"], r["methods"])
        out.print(t)
        return
    root_path = data_root(root)
    out.print(f"datasets (root: {root_path})", highlight=False, soft_wrap=True)
    t = Table()
    for col in catalog.LIST_COLUMNS:
        t.add_column(col)
    for row in catalog.listing(root_path):
        t.add_row(*row)
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

    argv = _expand_lists(sys.argv[1:])
    if argv[:1] != ["run"]:  # `run` chooses by the load of its CPUs (threads.decide); before torch is imported
        prefer_passive_wait()
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
