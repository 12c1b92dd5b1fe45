"""What a run shows while it works.

- On a terminal (``RichReporter``): a live line per phase; while training it shows the epoch,
  the loss, the learning rate, the last epoch's training accuracy (and loss terms) and an ETA from
  the mean epoch time so far (rich's own estimate follows the momentary speed and jumps around).
  The line fits the terminal: a narrow one (80 columns and less) drops the least important fields
  first; the epoch, the loss and the ETA are always shown.
- Otherwise (``LogReporter``: output redirected to a file, SLURM logs): plain lines, one per
  finished epoch with the loss terms, lr, training accuracy, seconds and ETA, and, as Dassl does,
  one every ``LOG_EVERY`` batches inside long epochs.

Both implement ``protocols.jobs.Reporter``; ``make_reporter`` picks by whether the console
(stderr) is a terminal.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.text import Text

from cpbench.errors import UserError

LOG_EVERY = 50  # batches between in-epoch log lines (Dassl's PRINT_FREQ is 5-20 on smaller data)


def printable(text: str) -> str:
    """Non-UTF-8 file names (surrogate escapes) print as backslash escapes instead of failing."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def loss_text(loss: float, terms: dict[str, float] | None = None) -> str:
    text = f"loss {loss:.4f}"
    if terms and (len(terms) > 1 or next(iter(terms)) != "ce"):
        text += " (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")"
    return text


def epoch_line(stats, eta: float | None) -> str:
    acc = "" if stats.train_acc is None else f"  train acc {stats.train_acc:.1f}%"
    return (f"epoch {stats.epoch + 1}/{stats.epochs}  {loss_text(stats.loss, stats.terms)}  lr {stats.lr:.3e}"
            f"{acc}  {stats.seconds:.1f} s  eta {clock(eta)}")


class EpochClock:
    """ETA of a training from the mean epoch time so far (within the first epoch: from its batch rate)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.epoch_started = time.monotonic()
        self.epoch = 0
        self.epochs = 0

    def start(self, epochs: int) -> None:
        self.durations, self.epochs, self.epoch_started = [], epochs, time.monotonic()

    def batch(self, epoch: int, done: int, total: int) -> float | None:
        if epoch != self.epoch:
            self.epoch, self.epoch_started = epoch, time.monotonic()
        in_epoch = time.monotonic() - self.epoch_started
        if self.durations:
            per_epoch = sum(self.durations) / len(self.durations)
        elif done:
            per_epoch = in_epoch * total / done
        else:
            return None
        return max(0.0, per_epoch * (self.epochs - epoch) - in_epoch)

    def finished(self, stats) -> float:
        self.durations.append(stats.seconds)
        self.epoch, self.epoch_started = stats.epoch + 1, time.monotonic()
        return sum(self.durations) / len(self.durations) * (stats.epochs - stats.epoch - 1)


class _Reporter:
    def __init__(self, console: Console):
        self.console = console
        self.clock = EpochClock()

    def say(self, text: str) -> None:
        self.console.print(printable(text), highlight=False, soft_wrap=True, markup=False)

    def job_started(self, job, index, total):
        self.say(f"job {index}/{total} {job.describe()}")

    def job_skipped(self, job):
        self.say(f"skip (already in results): {job.describe()}")

    def job_failed(self, job, exc: BaseException) -> None:
        if not isinstance(exc, UserError):  # a bug: keep its traceback
            self.say("".join(traceback.format_exception(exc)).rstrip())
        self.say(f"  FAILED: {job.describe()}: {exc}")

    def row(self, row):
        if row.get("recall_at"):  # retrieval
            self.say(f"  {row['eval_dataset']} {row['subset']} R@{row['recall_at']}: {row['accuracy']:.2f}% "
                     f"({row['n_test']} queries, {row['n_classes']} candidates)")
            return
        after = f" after task {row['task']}" if row.get("task") else ""  # continual
        self.say(f"  {row['eval_dataset']}/{row['subset']}{after}: {row['accuracy']:.2f}% "
                 f"({row['n_test']} images, {row['n_classes']} classes)")


class LogReporter(_Reporter):
    """Plain lines for logs (no terminal)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def phase(self, text, total=None):
        if text.startswith("training"):
            self.clock.start(total or 0)
        self.say(f"  {text}")

    def advance(self, done, total):
        pass

    def batch(self, epoch, done, total, loss, lr):
        eta = self.clock.batch(epoch, done, total)
        if total > LOG_EVERY and done % LOG_EVERY == 0 and done < total:
            self.say(f"  epoch {epoch + 1}/{self.clock.epochs} batch {done}/{total}  loss {loss:.4f}  lr {lr:.3e}  "
                     f"eta {clock(eta)}")

    def epoch(self, stats):
        self.say("  " + epoch_line(stats, self.clock.finished(stats)))


ESSENTIAL = 100  # a field that is shown at any width: the epoch (or step), the loss and the ETA
BAR_WIDTH = (10, 40)


@dataclass(frozen=True)
class Field:
    """One field of the live display's line. ``keep``: fields with a higher one stay longer when
    the terminal is narrow; ``shortest``: the field may be cut (with "…") down to that many cells;
    ``bar``: the progress bar (it takes the room left, 10 to 40 cells)."""
    text: str
    keep: int
    shortest: int = 0
    bar: bool = False

    def least(self) -> int:
        return BAR_WIDTH[0] if self.bar else min(cell_len(self.text), self.shortest or cell_len(self.text))


def fit(fields: list[Field], width: int, gap: int = 2) -> list[tuple[Field, int]]:
    """The fields (in their order) that fit ``width`` cells, each with its width: the most important
    first, each whole if it fits, else cut short to the room left (if at least its ``shortest``);
    the room left widens the bar. The ESSENTIAL ones are always there (if even they do not fit, the
    line is cut at the edge)."""
    widths: dict[int, int] = {}
    for i in sorted(range(len(fields)), key=lambda i: -fields[i].keep):
        room = width - sum(widths.values()) - gap * len(widths)
        f = fields[i]
        full = BAR_WIDTH[0] if f.bar else cell_len(f.text)
        if full <= room or f.keep >= ESSENTIAL:
            widths[i] = full
        elif f.least() <= room:
            widths[i] = room  # cut short to the room left
    room = max(0, width - sum(widths.values()) - gap * (len(widths) - 1))
    for i in widths:  # the room left widens the bar
        if fields[i].bar:
            widths[i] += min(room, BAR_WIDTH[1] - BAR_WIDTH[0])
    return [(fields[i], widths[i]) for i in sorted(widths)]


def fitted_line(fields: list[Field], width: int, completed: float = 0, total: float | None = None) -> Text:
    """The live display's line at ``width`` cells: never wider, so a narrow terminal loses the least
    important fields instead of wrapping the display into garbage."""
    line = Text(no_wrap=True, overflow="ellipsis")
    for n, (f, w) in enumerate(fit(fields, width)):
        if n:
            line.append("  ")
        if f.bar:
            done = w if not total else min(w, int(w * completed / total))
            line.append("━" * done, style="bar.complete")
            line.append("━" * (w - done), style="bar.back")
        elif cell_len(f.text) > w:
            line.append(set_cell_size(f.text, w - 1) + "…")
        else:
            line.append(f.text)
    line.truncate(width, overflow="ellipsis")
    return line


def live_fields(description: str, completed: float, total: float | None, elapsed: float | None, f: dict) -> list[Field]:
    """What the live line shows, most important kept: while training the epoch, the loss and the ETA
    always, then the learning rate, the last epoch's training accuracy, the phase, the bar, the time
    so far and the last epoch's loss terms; in other phases the step, the ETA, the phase, the bar and
    the time so far."""
    fields = [Field(description, 6, shortest=12), Field("", 4, bar=True), Field(f["step"], ESSENTIAL)]
    if f.get("loss") is not None:
        fields += [Field(f"loss {f['loss']:.4f}", ESSENTIAL)]
        if f.get("lr") is not None:
            fields += [Field(f"lr {f['lr']:.2e}", 8)]
        if f.get("acc") is not None:
            fields += [Field(f"train acc {f['acc']:.1f}%", 7)]
        if f.get("terms"):
            fields += [Field("last epoch: " + loss_text(f["last_loss"], f["terms"]), 1)]
    fields += [Field(clock(elapsed), 2), Field(f"eta {f['eta']}", ESSENTIAL)]
    return fields


class FittedProgress(Progress):
    """rich's Progress drawn as one line per task that fits the terminal (``fitted_line``)."""

    def get_renderables(self):
        tasks = [t for t in self.tasks if t.visible]
        if tasks:  # (also called by Progress.__init__, before it has a console)
            width = self.console.width
            yield Group(*(fitted_line(live_fields(t.description, t.completed, t.total, t.elapsed, t.fields), width,
                                      t.completed, t.total) for t in tasks))


class RichReporter(_Reporter):
    """A live display on a terminal: one line per phase that fits the terminal's width."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = FittedProgress(console=console, transient=True)
        self.task = None
        self.started = time.monotonic()
        self.last: dict = {}   # the last finished epoch's accuracy and loss terms, shown during the next

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        self.progress.console.print(escape(printable(text)), highlight=False, soft_wrap=True)

    def phase(self, text, total=None):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.started = time.monotonic()
        if text.startswith("training"):
            self.clock.start(total or 0)
            self.last = {}
        self.task = self.progress.add_task(printable(text), total=total, step="", eta=clock(None))

    def advance(self, done, total):
        if self.task is None:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (total - done) / done if done else None
        self.progress.update(self.task, completed=done, total=total, step=f"{done}/{total}", eta=clock(eta))

    def batch(self, epoch, done, total, loss, lr):
        if self.task is None:
            return
        eta = self.clock.batch(epoch, done, total)
        self.progress.update(self.task, completed=epoch + done / max(1, total), step=f"epoch {epoch + 1}/{self.clock.epochs}",
                             loss=loss, lr=lr, eta=clock(eta), **self.last)

    def epoch(self, stats):
        eta = self.clock.finished(stats)
        self.last = {"acc": stats.train_acc, "terms": stats.terms, "last_loss": stats.loss}
        if self.task is not None:
            self.progress.update(self.task, completed=stats.epoch + 1, step=f"epoch {stats.epoch + 1}/{stats.epochs}",
                                 loss=stats.loss, lr=stats.lr, eta=clock(eta), **self.last)


def make_reporter(console: Console):
    """The live display on a terminal, plain log lines otherwise."""
    return RichReporter(console) if console.is_terminal else LogReporter(console)


class ByteProgress:
    """Callback for downloads/extraction: (label, done, total)."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
                                 disable=not console.is_terminal)  # piped: no live display, no blank lines
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)
