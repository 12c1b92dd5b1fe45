"""How fast cpbench answers when it cannot or need not work: the timings that unit tests must not
assert (they depend on the machine and its load), each next to the path it is compared with,
measured in the same run.

    python benchmarks/latency/measure.py [--repeat 3] [--out benchmarks/latency/results.jsonl]

1. ``user_error``: ``cpbench run`` with a mistyped protocol, and with two --shots values for a
   protocol that takes one, in a fresh process: answered before torch is imported; compared with
   ``python -c "import torch, torchvision"``, what every such error cost when it came after.
2. ``offline_backbone``: the default backbone (ViT-B-16, OpenAI weights) with an empty cache and an
   unreachable hub: one line naming the fix after the probe, no download retries; compared with the
   same zero-shot run on the tiny random backbone, which succeeds (start-up, load, evaluate).
3. ``probe``: ``models.hub.reachable`` on a port nothing listens on and on an unresolvable host,
   against its 2 s limit.
4. ``prepare_again``: ``cpbench prepare toy_shapes`` when it is already prepared (verify, skip)
   against preparing it.

``cpbench report --ci`` has its own measurements: benchmarks/report/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], env: dict | None = None, expect: int | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if expect is not None and proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, not {expect}:\n{proc.stderr[-2000:]}")
    return seconds


def median_of(n: int, fn) -> float:
    return statistics.median(fn() for _ in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/latency/results.jsonl"))
    args = ap.parse_args()
    py, rows = sys.executable, []

    def record(**row) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    record(bench="machine", python=platform.python_version(), cpus=os.cpu_count(), loadavg=os.getloadavg(),
           command=" ".join([os.path.basename(py), *sys.argv]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, res = tmp / "data", tmp / "res"
        cpbench = [py, "-m", "cpbench"]
        torch_import = median_of(args.repeat, lambda: wall([py, "-c", "import torch, torchvision"], expect=0))
        for what, extra in (("mistyped --protocol", ["--protocol", "nosuch"]),
                            ("two --shots for base2new", ["--shots", "1", "2"])):
            s = median_of(args.repeat, lambda: wall([*cpbench, "run", "coop", *extra, "--root", str(data), "--results",
                                                     str(res)], expect=2))
            record(bench="user_error", what=what, seconds=round(s, 2), torch_import_seconds=round(torch_import, 2),
                   ratio=round(s / torch_import, 2))

        fresh = wall([*cpbench, "prepare", "toy_shapes", "--root", str(data)], expect=0)
        again = median_of(args.repeat, lambda: wall([*cpbench, "prepare", "toy_shapes", "--root", str(data)], expect=0))
        record(bench="prepare_again", dataset="toy_shapes", seconds=round(again, 2), fresh_seconds=round(fresh, 2),
               ratio=round(again / fresh, 2))

        run = [*cpbench, "run", "zeroshot", "--dataset", "toy_shapes", "--seeds", "1", "--device", "cpu", "--root",
               str(data), "--results", str(res), "--force"]
        offline = {"HF_HOME": str(tmp / "hf"), "HF_ENDPOINT": "https://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
                   "XDG_CACHE_HOME": str(tmp / "cache")}
        fails = median_of(args.repeat, lambda: wall([*run, "--backbone", "ViT-B-16", "--pretrained", "openai"],
                                                    env=offline, expect=2))
        works = median_of(args.repeat, lambda: wall([*run, "--backbone", "tiny", "--pretrained", "none"], expect=0))
        record(bench="offline_backbone", seconds=round(fails, 2), tiny_run_seconds=round(works, 2),
               ratio=round(fails / works, 2))

    from cpbench.models import hub

    def probe(host: str, port: int) -> float:
        t0 = time.perf_counter()
        hub.reachable(host, port=port, seconds=2)
        return time.perf_counter() - t0

    for host, port in (("127.0.0.1", 9), ("host.invalid", 443)):
        s = median_of(args.repeat, lambda: probe(host, port))
        record(bench="probe", host=f"{host}:{port}", seconds=round(s, 3), limit_seconds=2, ratio=round(s / 2, 3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
