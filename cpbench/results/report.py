"""``cpbench report``: results rows -> entries -> seed means -> protocol tables -> ``Report``.

1. ``entries.normalise``: neutral values for columns old shards lack; re-runs replace old rows.
2. the ``--protocol/--methods/--datasets`` filters.
3. ``entries.annotate``: each row's entry (method, backbone, origin, configuration), so that
   different settings never share a cell; ``entries.select``: ``--config-hash`` / ``--latest``.
4. ``aggregate``: seed mean, population std (ddof=0, as CoOp's parse_test_res), seeds,
   per-seed values and the rows' cpbench versions per (entry, protocol, datasets, subset, shots).
5. ``layouts``: the protocol tables (HM and Average rows the papers' way).
6. ``compare.attach`` (``--compare paper``): published numbers of the same setting.
7. With per-image predictions (``predictions``, read through ``outcomes``): ``intervals``
   (``--ci``: bootstrap intervals on every cell), ``paired`` (``--compare-methods A B``),
   ``per_class`` (``--per-class DATASET``); from the rows alone: ``cost`` (``--cost``).

Renderers (``formats``) and plots (``plots``) read the resulting ``table.Report``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cpbench.errors import UserError
from cpbench.methods.registry import report_rank
from cpbench.results import entries as ent
from cpbench.results import layouts
from cpbench.results.layouts import LAYOUTS, PROTOCOL_ORDER, hm  # noqa: F401  (re-exported)
from cpbench.results.table import Entry, Report

AGG_COLUMNS = ["entry", *ent.CELL, "config_hash"]


@dataclass
class ReportOptions:
    protocols: Sequence[str] = ()
    methods: Sequence[str] = ()
    datasets: Sequence[str] = ()
    config_hashes: Sequence[str] = ()   # --config-hash PREFIX ...
    latest: bool = False                # --latest
    layout: str = "auto"                # base2new: auto | wide | long
    compare: bool = False               # --compare paper
    ci: bool = False                    # --ci
    compare_methods: Sequence[str] = () # --compare-methods A B
    per_class: str = ""                 # --per-class DATASET
    cost: bool = False                  # --cost


def filter_rows(df: pd.DataFrame, protocols=(), methods=(), datasets=()) -> pd.DataFrame:
    if protocols:
        df = df[df["protocol"].isin(protocols)]
    if methods:
        df = df[df["method"].isin(methods)]
    if datasets:
        # transfer protocols keep their source column whichever targets are selected
        keep_source = df["protocol"].isin(["cross_dataset", "dg"]) & (df["eval_dataset"] == df["train_dataset"])
        df = df[df["eval_dataset"].isin(datasets) | keep_source]
    return df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: mean, std (ddof=0), n_seeds, seeds and values (in seed order)."""
    if df.empty:
        return pd.DataFrame(columns=AGG_COLUMNS + ["mean", "std", "n_seeds", "seeds", "values", "versions"])
    g = df.sort_values("seed").groupby(AGG_COLUMNS, dropna=False, sort=False)
    out = g["accuracy"].agg(mean="mean", std=lambda s: float(s.std(ddof=0)), n_seeds="count").reset_index()
    out["seeds"] = g["seed"].agg(lambda s: tuple(int(x) for x in s)).values
    out["values"] = g["accuracy"].agg(lambda s: tuple(float(x) for x in s)).values
    out["versions"] = (g["cpbench_version"].agg(lambda s: tuple(sorted({str(x) for x in s.dropna() if str(x)}))).values
                       if "cpbench_version" in df.columns else [()] * len(out))
    return out


def order_entries(es: list[Entry]) -> list[Entry]:
    """The papers' method order (``registry.REPORT_ORDER``); within a method: trained before
    imported, the defaults first, then by backbone and settings."""
    return sorted(es, key=lambda e: (report_rank(e.method), e.imported != "", not (e.known_config and not e.overrides),
                                     e.backbone_label, ent.settings_text(e), e.key))


def _describe(e: Entry) -> str:
    hashes = ", ".join(h[:8] for h in e.config_hashes[:3]) + (", …" if len(e.config_hashes) > 3 else "")
    return f"{e.label} = {ent.settings_text(e) or 'the defaults'} [config {hashes}]"


def entry_notes(df: pd.DataFrame, es: list[Entry], choices: list[ent.Choice]) -> list[str]:
    """What the labels stand for and what a selection kept (one line each)."""
    notes = []
    backbones = sorted({e.backbone_label for e in es})
    notes.append(f"Backbone: {backbones[0]}." if len(backbones) == 1 else
                 f"Backbones: {', '.join(backbones)}; each label names its backbone.")
    several = df.groupby(["protocol", "method"])["entry"].nunique()
    multi = {m for (_, m), n in several.items() if n > 1}
    listed = [e for e in es if e.overrides or not e.known_config or e.method in multi]
    if listed:
        notes.append("Configurations (settings that differ from the method's defaults in "
                     "cpbench/configs/methods/): " + "; ".join(_describe(e) for e in listed)
                     + ("." if not multi else
                        ". Several configurations of one method are separate entries; keep one with "
                        "--config-hash PREFIX or --latest."))
    by_key = {e.key: e for e in es}
    for c in choices:
        kept = "; ".join(_describe(by_key[k]) for k in c.kept if k in by_key)
        notes.append(f"{c.how}: {c.scope}: kept {kept}" + (f"; {c.dropped} other configuration(s) left out."
                                                            if c.dropped else "."))
    if any(e.imported for e in es):
        notes.append("imported = learned parameters loaded instead of trained by cpbench (official: the authors' "
                     "released checkpoints; export: a cpbench export file).")
    if any(e.imported.startswith("dassl-log:") for e in es):
        notes.append("imported dassl-log = accuracies read from the official scripts' log.txt (`cpbench import-logs`), "
                     "run with the official code and its cfg (named after the colon); they hold no per-image "
                     "predictions, so --ci, --compare-methods and --per-class have nothing behind those rows.")
    return notes


Outcomes = Callable[[Iterable[str]], dict]   # job keys -> {(run_id, eval_dataset, subset): Outcome}


def build(frame: pd.DataFrame, opts: ReportOptions | None = None, outcomes: Outcomes | None = None) -> Report:
    """The report of ``frame``'s rows; ``outcomes`` reads the stored per-image predictions of the
    given job keys (needed by --ci, --compare-methods and --per-class)."""
    from cpbench.data.specs import COOP_DATASETS, IMAGENET_VARIANTS
    from cpbench.results.continual import continual_tables
    from cpbench.results.retrieval import retrieval_tables

    opts = opts or ReportOptions()
    if opts.layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {opts.layout!r}")
    df = filter_rows(ent.normalise(frame), opts.protocols, opts.methods, opts.datasets)
    if df.empty:
        raise UserError("no results match --protocol/--methods/--datasets; drop a filter (see `cpbench report`)")
    df, by_key = ent.annotate(df)
    df, choices = ent.select(df, list(opts.config_hashes), opts.latest)
    es = ent.assign_labels(order_entries([by_key[k] for k in df["entry"].unique()]))
    if opts.compare_methods:
        from cpbench.results import paired

        names = paired.check(tuple(opts.compare_methods), es)
    if opts.per_class:
        from cpbench.results import per_class

        per_class.check(opts.per_class, df)
    agg = aggregate(df)
    cells = layouts.Cells(agg, {e.key: e for e in es})
    tables = layouts.base2new_tables(cells, agg, es, opts.layout, opts.compare, opts.ci)
    tables += layouts.transfer_tables(cells, agg, es, "cross_dataset", COOP_DATASETS[1:])
    tables += layouts.transfer_tables(cells, agg, es, "dg", IMAGENET_VARIANTS)
    tables += layouts.few_shot_tables(cells, agg, es)
    tables += continual_tables(cells, agg, es) + retrieval_tables(cells, agg, es)
    notes = entry_notes(df, es, choices)
    for protocol in sorted(set(df["protocol"]) - {t.protocol for t in tables}):  # e.g. a protocol added since
        notes.append(f"{protocol}: {int((df['protocol'] == protocol).sum())} row(s) not shown; the report has no "
                     "table layout for this protocol (cpbench/results/layouts.py)")
    if opts.compare:
        from cpbench.results import compare

        notes += compare.attach(tables)
    out = Report(tables, notes)
    views: list = []
    if opts.ci or opts.compare_methods or opts.per_class:
        from cpbench.results import intervals

        found = outcomes(df["job_key"].dropna().unique()) if outcomes is not None and "job_key" in df.columns else {}
        samples = intervals.Samples(df, found) if (opts.ci or opts.compare_methods) else None
        if opts.ci:
            intervals.attach(out, samples)
        if opts.compare_methods:
            views += paired.tables(out, samples, names)
        if opts.per_class:
            views += per_class.tables(df, found, {e.key: e for e in es}, opts.per_class)
    if opts.cost:
        from cpbench.results import cost

        views += cost.tables(df, {e.key: e for e in es})
    # a view (--compare-methods, --per-class, --cost) replaces the protocol tables unless --ci asks for them
    out.tables = (tables if opts.ci or not (opts.compare_methods or opts.per_class or opts.cost) else []) + views
    return out


# --------------------------------------------------------------------------- ``cpbench report``


def check_options(opts: ReportOptions, format: str, compare: str | None, plots: Path | None) -> None:
    """The report's options, checked before anything is read (one line each)."""
    from cpbench.protocols.registry import protocol_names
    from cpbench.results import formats

    if format not in formats.FORMATS:
        raise UserError(f"--format must be one of {', '.join(formats.FORMATS)}, got {format!r}")
    if compare not in (None, "paper"):
        raise UserError(f"--compare takes `paper`, got {compare!r}")
    if opts.layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {opts.layout!r}")
    bad = [p for p in opts.protocols if p not in protocol_names()]
    if bad:
        raise UserError(f"unknown protocol {bad[0]!r} in --protocol; use {', '.join(protocol_names())}")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UserError(f"--plots {plots} is a file; pass a folder (it is created if missing)")


def command(results: Path, opts: ReportOptions, format: str = "markdown", std: bool = True,
            compare: str | None = None, plots: Path | None = None, curves: Path | None = None,
            say: Callable[[str], None] = lambda text: None, warn: Callable[[str], None] = lambda text: None) -> str:
    """``cpbench report``: check the options, plot the training curves (``curves``), read the results
    under ``results``, build the report, write its figures (``plots``) and return it rendered in
    ``format``. ``say``: a line for the user (files written, notes csv cannot hold); ``warn``: a
    problem the report goes on after (an unreadable shard)."""
    from dataclasses import replace

    from cpbench.results import formats, predictions
    from cpbench.results.store import ResultStore

    opts = replace(opts, compare=compare == "paper")
    check_options(opts, format, compare, plots)
    if curves is not None:
        from cpbench.results.curves import write_curve_plots

        for p in write_curve_plots(results, curves, opts.methods, opts.datasets, warn=warn):
            say(f"wrote {p}")
    store = ResultStore(results)
    read = store.read()
    for path in read.corrupt:
        warn(f"skipped unreadable results shard {path} (delete it and re-run its job)")
    if read.frame.empty:
        raise UserError(f"no results under {store.root}; run `cpbench run METHOD` first (or pass --results DIR)")
    named: set = set()

    def skipped(file, why):  # said once per file, however many views read it
        if file in named:
            return
        named.add(file)
        warn(f"skipped unreadable predictions file {file} ({why}): its runs are left out of the views that need "
             "per-image predictions; delete it and re-run its job with --force to store them again")

    built = build(read.frame, opts, outcomes=lambda keys: predictions.read(store.root, keys, skipped))
    if plots is not None:
        try:
            from cpbench.results.plots import write_plots

            made = write_plots(built.tables, plots)
        except ModuleNotFoundError as exc:
            raise UserError(f"--plots needs {exc.name}; pip install matplotlib")
        for p in made:
            say(f"wrote {p}")
    if format == "csv":  # csv has no place for the notes
        for note in built.notes:
            say(note)
    if opts.per_class and plots is None:
        say("--per-class: add --plots DIR for the PNG")
    page_curves = None
    if format == "html":  # the leaderboard page embeds the training curves where histories exist
        from cpbench.results.curves import read_curves

        page_curves = read_curves(store.root)
        if opts.methods:
            page_curves = page_curves[page_curves["method"].isin(list(opts.methods))]
    return formats.render(built, format, std, page_curves)
