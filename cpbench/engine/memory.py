"""Peak memory of a job, for ``cpbench report --cost``.

On a GPU: ``torch.cuda.max_memory_allocated`` (tensors allocated by PyTorch on that device),
reset when the job starts, so each job reports its own peak. On a CPU: the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which cannot be reset: when
one process runs several jobs, later jobs report the largest peak so far (an upper bound).
"""

from __future__ import annotations

import sys

import torch

CUDA = "cuda.max_memory_allocated"
RSS = "process maxrss"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> tuple[float, str]:
    """(peak in MiB, what was measured: ``CUDA`` or ``RSS``)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, CUDA
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), RSS
