"""Rich progress display for long work (downloads, extraction, epochs, evaluation)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)


class RichReporter:
    """Implements ``protocols.jobs.Reporter`` with one progress bar per phase."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def job_started(self, job, index, total):
        self.console.print(f"[bold]job {index}/{total}[/] {job.describe()}")

    def job_skipped(self, job):
        self.console.print(f"[dim]skip (already in results): {job.describe()}[/]")

    def phase(self, text, total=None):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(text, total=total)

    def advance(self, done, total):
        if self.task is not None:
            self.progress.update(self.task, completed=done, total=total)

    def row(self, row):
        if row.get("recall_at"):  # retrieval
            self.console.print(f"  {row['eval_dataset']} {row['subset']} R@{row['recall_at']}: "
                               f"[bold]{row['accuracy']:.2f}%[/] ({row['n_test']} queries, {row['n_classes']} candidates)")
            return
        after = f" after task {row['task']}" if row.get("task") else ""  # continual
        self.console.print(f"  {row['eval_dataset']}/{row['subset']}{after}: [bold]{row['accuracy']:.2f}%[/] "
                           f"({row['n_test']} images, {row['n_classes']} classes)")


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
