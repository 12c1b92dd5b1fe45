"""Atomic writes give files the mode an ordinary new file would have (0666 minus the umask), not
mkstemp's 0600, so a results folder shared with colleagues is readable to them (issue 17)."""

from __future__ import annotations

import os
import stat

import pytest

from cpbench import atomic


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic.write_json(tmp_path / "x.json", {"a": 1})
        with atomic.atomic_path(tmp_path / "y.bin") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    for name in ("x.json", "y.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert atomic.new_file_mode() == 0o640
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
