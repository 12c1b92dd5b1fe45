"""A documented test hook for crash testing (issue 8), inert unless ``CPBENCH_FAULT_AT`` is set.

``CPBENCH_FAULT_AT=N`` makes the process ``os._exit(FAULT_EXIT)`` at the N-th fault point it
passes (1-based): after every training batch, every evaluation batch and between writing a
temp file and renaming it into place (``atomic.atomic_path``). ``os._exit`` skips ``finally``
blocks and buffered writes exactly as SIGKILL does, so the fault tests can stop a run at a
chosen, reproducible place. The counter is per process and only counts while the variable is set.
"""

from __future__ import annotations

import os

FAULT_EXIT = 173
_passed = [0]


def point(where: str = "") -> None:
    at = os.environ.get("CPBENCH_FAULT_AT")
    if not at:
        return
    _passed[0] += 1
    if _passed[0] >= int(at):
        os._exit(FAULT_EXIT)
