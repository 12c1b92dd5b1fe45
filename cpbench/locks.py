"""Exclusive file locks that say who holds them and leave no file behind.

``held(path, waiting=...)`` takes an ``flock`` on ``path`` (created if missing). The file holds its
holder (pid, host, since), so a second process that must wait can say for whom; ``waiting(holder)``
is called once, before it blocks. The holder removes the file before it unlocks, and a process that
locked a file which was removed meanwhile (it opened the old one) tries again, so no two processes
ever hold the same path and no lock file outlives its holder. A killed holder's flock dies with it;
its file (left behind only by SIGKILL) is simply taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words ("pid 123 on host, since 10:42:07"), as it wrote."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def held(path: str | Path, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None and not said:
                    waiting(holder(path))
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; a signal's exception still ends it
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file we had opened: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    except OSError:
        pass  # the holder's name is a courtesy; the lock itself holds
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
