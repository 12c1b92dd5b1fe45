"""What a run shows while it works.

- On a terminal (``RichReporter``): a live bar per phase; while training it shows the epoch,
  the loss (and each loss term at the end of an epoch), the learning rate, the training accuracy
  and an ETA from the mean epoch time so far (rich's own estimate follows the momentary speed
  and jumps around).
- Otherwise (``LogReporter``: output redirected to a file, SLURM logs): plain lines, one per
  finished epoch with the loss terms, lr, training accuracy, seconds and ETA, and, as Dassl does,
  one every ``LOG_EVERY`` batches inside long epochs.

Both implement ``protocols.jobs.Reporter``; ``make_reporter`` picks by whether the console
(stderr) is a terminal.
"""

from __future__ import annotations

import time
import traceback

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

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


class RichReporter(_Reporter):
    """A live display on a terminal, one bar per phase."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 TextColumn("eta {task.fields[eta]}"), console=console, transient=True)
        self.task = None
        self.started = time.monotonic()
        self.last_epoch = ""   # the last finished epoch's loss and accuracy, shown during the next

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
            self.last_epoch = ""
        self.task = self.progress.add_task(escape(printable(text)), total=total, step="", info="", eta=clock(None))

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
        info = f"loss {loss:.4f}  lr {lr:.2e}" + (f"  | last: {self.last_epoch}" if self.last_epoch else "")
        self.progress.update(self.task, completed=epoch + done / max(1, total),
                             step=f"epoch {epoch + 1}/{self.clock.epochs}", info=escape(info), eta=clock(eta))

    def epoch(self, stats):
        eta = self.clock.finished(stats)
        acc = "" if stats.train_acc is None else f"  acc {stats.train_acc:.1f}%"
        self.last_epoch = f"{loss_text(stats.loss, stats.terms)}{acc}"
        if self.task is not None:
            self.progress.update(self.task, completed=stats.epoch + 1, step=f"epoch {stats.epoch + 1}/{stats.epochs}",
                                 info=escape(f"{self.last_epoch}  lr {stats.lr:.2e}"), eta=clock(eta))


def make_reporter(console: Console):
    """The live display on a terminal, plain log lines otherwise."""
    return RichReporter(console) if console.is_terminal else LogReporter(console)


class ByteProgress:
    """Callback for downloads/extraction: (label, done, total)."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
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
