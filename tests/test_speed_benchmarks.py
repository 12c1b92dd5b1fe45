"""The speed benchmark scripts run: the GPU benchmark in its --dry-run mode (tiny backbone, CPU,
every section but the worker-pool one, which tests/test_launch.py covers) and its FLOP counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEED = REPO / "benchmarks" / "speed"


def test_flop_counts_match_the_known_vit_b16_figure_and_order_the_text_modes():
    sys.path.insert(0, str(SPEED))
    try:
        from gpu import image_flops, text_flops
    finally:
        sys.path.remove(str(SPEED))
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("ViT-B-16", "none")
    assert abs(image_flops(bb) / 1e9 - 35.1) < 0.2     # ViT-B/16 at 224: 17.6 GMACs (timm, fvcore)
    eot = [7, 8, 11]
    f = {m: text_flops(bb, eot, 2, 5, m, False) for m in ("naive", "cut", "shared")}
    assert f["shared"] < f["cut"] < f["naive"]
    assert f["cut"] == 2 * 3 * 12 * (24 * 12 * 512 ** 2 + 4 * 12 * 12 * 512)   # 2 groups x 3 rows of 12 tokens
    assert text_flops(bb, eot, 1, 5, "shared", True) > text_flops(bb, eot, 1, 5, "shared", False)


@pytest.mark.slow
def test_gpu_benchmark_dry_run_prints_every_section(tmp_path):
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.run([sys.executable, str(SPEED / "gpu.py"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    benches = [r["bench"] for r in printed]
    assert benches[0] == "machine" and benches[-1] == "done" and "roofline" in benches
    steps = [r for r in printed if r["bench"] == "train_step"]
    assert {r["method"] for r in steps} == {"coop", "cocoop", "maple", "promptsrc"}
    for r in steps:
        assert all(r[m]["images_per_s"] > 0 for m in ("naive", "cut", "shared"))
        assert r["shared"]["flops_per_step"] <= r["cut"]["flops_per_step"] < r["naive"]["flops_per_step"]
        assert r["roofline_images_per_s"] > 0
    assert {"eval", "loader", "cold_eval_jpeg", "views"} <= set(benches)
    views = next(r for r in printed if r["bench"] == "views")
    assert views["identical_state"] == {"fill": True, "store": True}, views   # exact, on this CPU
    assert views["store_bytes"] > 0 and views["store_images_per_s"] > 0
