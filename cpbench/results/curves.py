"""Training curves: every training keeps its per-epoch history next to its checkpoints.

``RESULTS/checkpoints/<training_key>/history.parquet`` has one row per finished epoch:
the identifying columns (``IDENT``: method, train_dataset, train_subset, shots, seed, backbone,
pretrained, config_hash, plus weights and training_key), then ``epoch`` (1-based), ``epochs``,
``lr``, ``loss`` (the summed loss), one ``loss_<term>`` column per loss term of the method
(``loss_ce``, ``loss_kl``, …), ``train_acc`` (percent, from the training logits) and ``seconds``.
The rows come from the epoch checkpoint, so a resumed training ends with the same history as an
uninterrupted one (only ``seconds`` differ). ``read_curves`` gathers them; ``plot_curves`` draws
one PNG per training setting (``cpbench report --curves DIR``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cpbench import atomic

HISTORY = "history.parquet"
IDENT = ("method", "train_dataset", "train_subset", "shots", "seed", "backbone", "pretrained", "config_hash")
COLUMNS = (*IDENT, "weights", "training_key", "epoch", "epochs", "lr", "loss", "train_acc", "seconds")


def write_history(ckpt_dir: Path, rows: list[dict], ident: dict) -> Path:
    """Rewrite ``ckpt_dir/history.parquet`` (atomically) from the history rows so far."""
    frame = pd.DataFrame([{**ident, "training_key": Path(ckpt_dir).name, **r} for r in rows])
    path = Path(ckpt_dir) / HISTORY
    with atomic.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_curves(results_root: Path) -> pd.DataFrame:
    """Every training's history under ``results_root`` as one frame (empty, with the base columns,
    when there is none). Unreadable files are skipped."""
    frames = []
    ckpts = Path(results_root) / "checkpoints"
    for path in sorted(ckpts.glob(f"*/{HISTORY}")) if ckpts.is_dir() else []:
        try:
            frames.append(pd.read_parquet(path))
        except Exception:  # a half-copied or foreign file: the others still plot
            continue
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values([*IDENT, "epoch"], kind="stable").reset_index(drop=True)


def _label(key: tuple, methods_with_many_configs: set[str]) -> str:
    method, config_hash = key
    return f"{method} ({config_hash[:8]})" if method in methods_with_many_configs else method


def plot_curves(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per (train dataset, subset, shots, backbone): loss, train accuracy and lr against the
    epoch; one colour per method (and configuration), the mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    group_cols = ["train_dataset", "train_subset", "shots", "backbone", "pretrained"]
    for setting, part in curves.groupby(group_cols, sort=True, dropna=False):
        ds, subset, shots, backbone, pretrained = setting
        many = {m for m, g in part.groupby("method") if g["config_hash"].nunique() > 1}
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
        panels = (("loss", "training loss (sum of terms)"), ("train_acc", "training accuracy (%)"),
                  ("lr", "learning rate"))
        colours = plt.get_cmap("tab10")
        for i, (key, runs) in enumerate(part.groupby(["method", "config_hash"], sort=True)):
            per_epoch = runs.groupby("epoch")
            seeds = runs["seed"].nunique()
            label = _label(key, many) + (f", {seeds} seeds" if seeds > 1 else f", seed {runs['seed'].iloc[0]}")
            for ax, (col, _) in zip(axes, panels):
                stats = per_epoch[col].agg(["mean", "min", "max"])
                if stats["mean"].isna().all():
                    continue
                ax.plot(stats.index, stats["mean"], marker="o", ms=3, color=colours(i % 10), label=label)
                if seeds > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=colours(i % 10), alpha=0.15)
        for ax, (col, title) in zip(axes, panels):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if col == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
        fig.suptitle(f"{ds} / {subset} classes, {shots}-shot, {backbone} ({pretrained})")
        rows = math.ceil(len(labels) / 4) if labels else 0
        fig.tight_layout(rect=(0, 0.06 + 0.05 * rows, 1, 1))
        path = out_dir / f"curves-{ds}-{subset}-k{shots}-{backbone}.png".replace("/", "_").replace(":", "_")
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


def write_curve_plots(results_root: Path, out_dir: Path, methods=(), datasets=(), warn=print) -> list[Path]:
    """``cpbench report --curves DIR``: the curves under ``results_root`` (only ``methods`` /
    ``datasets`` when given) as PNGs in ``out_dir``."""
    from cpbench.errors import UserError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--curves {out_dir} is a file; pass a folder (it is created if missing)")
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("--curves needs matplotlib; pip install 'cpbench[plots]'") from None
    frame = read_curves(results_root)
    if methods:
        frame = frame[frame["method"].isin(list(methods))]
    if datasets:
        frame = frame[frame["train_dataset"].isin(list(datasets))]
    if frame.empty:
        warn(f"no training curves under {Path(results_root) / 'checkpoints'} to plot (trainings write "
             f"checkpoints/<training_key>/{HISTORY} epoch by epoch)")
        return []
    return plot_curves(frame, out_dir)
