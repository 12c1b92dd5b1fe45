"""File locks that name their holder and leave no file behind (issue 29): a second process says
whom it waits for; a prepare that fails or succeeds leaves no ``DATA/.locks/<dataset>.lock``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

from cpbench import locks


def test_a_second_holder_waits_and_is_told_whom_for(tmp_path):
    path = tmp_path / "locks" / "job.lock"
    script = textwrap.dedent(f"""
        import sys
        from cpbench import locks
        with locks.held({str(path)!r}, waiting=lambda who: print("WAITING", who, flush=True)):
            print("GOT", flush=True)
    """)
    with locks.held(path):
        assert path.exists() and f"pid {os.getpid()} on {socket.gethostname()}" in locks.holder(path)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        assert first.startswith(f"WAITING pid {os.getpid()} on {socket.gethostname()}, since "), first
    assert proc.stdout.readline() == "GOT\n"
    assert proc.wait(timeout=60) == 0
    assert not path.exists()  # the last holder removed it


def test_an_uncontended_lock_says_nothing_and_leaves_nothing(tmp_path):
    said = []
    with locks.held(tmp_path / "a.lock", waiting=said.append):
        pass
    with locks.held(tmp_path / "a.lock", waiting=said.append):  # again, after the file was removed
        pass
    assert said == [] and list(tmp_path.iterdir()) == []


def test_a_failed_prepare_leaves_no_lock_file(tmp_path, cli):
    root = tmp_path / "data"
    (root / ".locks").mkdir(parents=True)  # an existing data root: its folders stay
    rc, _, err = cli("prepare", "caltech101", "--from", str(tmp_path), "--root", str(root))
    assert rc == 2, err
    assert list((root / ".locks").iterdir()) == []
