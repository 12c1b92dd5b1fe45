"""The real Caltech101 from ../shared through ``--from`` and through a loopback HTTP server:
exactly CoOp's 4128 / 1649 / 2465 and 50 / 50 (skipped when ../shared is absent)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest

from cpbench.data import prepare as prep
from cpbench.data.catalog import all_specs

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CALTECH_SRC  # noqa: E402
from test_datasets_download import serve  # noqa: E402

pytestmark = pytest.mark.skipif(not (CALTECH_SRC / "101_ObjectCategories.tar.gz").exists(),
                                reason="../shared/datasets/caltech101 is not available")


def _assert_coop_counts(ds, info):
    assert info["counts"] == dict(train=4128, val=1649, test=2465, classes=100, base=50, new=50)
    assert len(ds.split.classnames) == 100
    assert {"face", "airplane", "leopard", "motorbike"} <= set(ds.split.classnames)
    assert "BACKGROUND_Google" not in ds.split.classnames


def test_real_caltech_from_folder_and_loopback(tmp_path):
    t0 = time.time()
    ds, info = prep.prepare("caltech101", tmp_path / "a", from_dir=CALTECH_SRC)
    t_from = time.time() - t0
    _assert_coop_counts(ds, info)
    # the inner archive given directly has no official checksum: accepted because the content matches
    assert info["sources"]["caltech-101.zip"]["checksum"] == "unknown"
    assert info["sources"]["split_zhou_Caltech101.json"]["checksum"] == "ok"

    # the same files served over HTTP (the tgz under the zip's name is what --from had; serve the
    # tgz as the inner archive by pointing the source at it directly)
    files = {p.name: p.read_bytes() for p in CALTECH_SRC.iterdir() if p.is_file()}
    spec = all_specs()["caltech101"]
    with serve(files) as (base, log):
        src0 = dataclasses.replace(spec.sources[0], filename="101_ObjectCategories.tar.gz", inner=None, md5=None,
                                   urls=(f"{base}/101_ObjectCategories.tar.gz",))
        src1 = dataclasses.replace(spec.sources[1], urls=(f"{base}/split_zhou_Caltech101.json",))
        t0 = time.time()
        ds2, info2 = prep.prepare("caltech101", tmp_path / "b", spec=dataclasses.replace(spec, sources=(src0, src1)))
        t_http = time.time() - t0
    _assert_coop_counts(ds2, info2)
    assert ds2.split == ds.split
    assert info2["sources"]["split_zhou_Caltech101.json"]["checksum"] == "ok"
    # idempotent: a second prepare verifies and skips (extracts and rewrites nothing)
    marker = tmp_path / "a" / "caltech-101" / prep.MARKER
    before = marker.stat().st_mtime_ns
    _, info3 = prep.prepare("caltech101", tmp_path / "a", from_dir=CALTECH_SRC)
    assert info3["skipped"] and marker.stat().st_mtime_ns == before
    print(f"caltech101 prepare: --from {t_from:.1f}s, loopback http {t_http:.1f}s")
