"""Ctrl-C and SIGTERM (a SLURM pre-emption, ``scancel``, ``kill``) become ``errors.Interrupted``.

The first signal raises ``Interrupted`` in the main thread wherever it is; the code on the way
out (the runner) adds what was saved, and the CLI prints one line and exits 130 (SIGINT) or
143 (SIGTERM). Nothing needs cleaning up by hand: rows and checkpoints are written atomically
and locks die with the process. A second signal is not caught: it ends the process at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from cpbench.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise(signum, frame):  # noqa: ARG001
    for s in SIGNALS:  # a second Ctrl-C / SIGTERM while stopping ends the process
        signal.signal(s, signal.SIG_DFL)
    raise Interrupted(signum)


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise ``Interrupted``; the previous handlers come back after
    (so an in-process caller such as a test keeps its own). Outside the main thread: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
