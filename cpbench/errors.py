"""The exceptions that decide how ``cpbench`` ends (its exit code), and nothing else.

- ``UserError`` (exit 2): a problem the user can fix; the CLI prints its message as one line.
- ``StorageError`` (exit 2): a ``UserError`` about the disk (full, not writable) that stops the
  whole run at once instead of failing job after job.
- ``JobsFailed`` (exit 1): some jobs failed, after every other job ran.
- ``Interrupted`` (exit 128 + signal: 130 for Ctrl-C, 143 for SIGTERM): the run was stopped;
  its line says what was saved and how to resume.

Anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import signal


class UserError(Exception):
    """A problem the user can fix; the message must name the fix."""

    exit_code = 2


class StorageError(UserError):
    """The disk refused a write (no space, no permission): every later job would fail the same way."""


class JobsFailed(Exception):
    """Some jobs failed (the others ran to the end); the message names the first failure."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised by ``cpbench.interrupts`` in the main thread.

    A ``BaseException`` of our own rather than ``KeyboardInterrupt``: typer/click turn a
    KeyboardInterrupt into their own exit handling, which differs between their versions, and
    ``except Exception`` blocks never swallow it. ``saved`` is filled in by whoever knows what
    was kept (the runner: finished jobs, the last checkpointed epoch)."""

    def __init__(self, signum: int = signal.SIGINT, saved: str = ""):
        super().__init__(signum)
        self.signum = int(signum)
        self.saved = saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        what = "interrupted" if self.signum == signal.SIGINT else f"terminated ({signal.Signals(self.signum).name})"
        saved = self.saved or "finished work is kept"
        return f"{what}: {saved}; re-run the same command to resume"
