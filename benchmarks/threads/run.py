"""CPU threads, measured side by side in one run (issue 17): torch's default threading against the
threads cpbench chooses (cpbench/threads.py), on a quiet machine and under a competing CPU load.

    python benchmarks/threads/run.py                 # the recorded table (several minutes)
    python benchmarks/threads/run.py --smoke         # a short check that the script works

Workloads, each a fresh ``python -m cpbench run`` process with its own results folder:

- ``coop-toy``: ``run coop --backbone toy --dataset toy_shapes --seeds 1 --set epochs=4`` (the
  issue's example); the figure is the job's ``train_seconds``;
- ``quickstart-coop``: the Quick start's CoOp step, ``run coop --backbone toy --seeds 1`` on the
  four toy datasets with their default epochs; the figure is the command's wall time.

Arms: ``torch-default`` runs the same CLI with cpbench's thread choice switched off (torch picks
its threads and OpenMP's waiting policy itself: spinning); ``cpbench`` is the plain command.
Extra arms for the ablation: ``cpbench-spin`` (cpbench's thread count, spinning waits),
``one-thread`` (``--threads 1``) and ``cpbench-spin30k`` (sleeping after a short spin,
``GOMP_SPINCOUNT=30000``).

Load: ``--load N`` busy-loop processes (default: half the CPUs this process may use, at least one;
``full`` = one per CPU) run while the loaded measurements run. Each cell is the median of
``--repeats`` runs; arms alternate within a repeat so a drifting machine load hits them alike.
The environment's OMP_NUM_THREADS / CPBENCH_THREADS / OMP_WAIT_POLICY are removed for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOY = ["toy_shapes", "toy_colour_shapes", "toy_pattern_shapes", "toy_scenes"]

# the CLI with cpbench's threading switched off (arm torch-default) or only its waiting policy off
WRAP = """
import sys
import cpbench.threads as t
if {no_wait}: t.prefer_passive_wait = lambda *a, **k: None
if {no_apply}: t.apply = lambda plan: None
from cpbench.cli import main
sys.argv = ["cpbench", *sys.argv[1:]]
main()
"""
ARMS = {
    "torch-default": dict(no_wait=True, no_apply=True, extra=[]),
    "cpbench": dict(no_wait=False, no_apply=False, extra=[]),
    "cpbench-spin": dict(no_wait=True, no_apply=False, extra=[]),
    "one-thread": dict(no_wait=False, no_apply=False, extra=["--threads", "1"]),
    # sleeping waits after a short spin (10x below libgomp's default 300000): quiet speed, but see README
    "cpbench-spin30k": dict(no_wait=False, no_apply=False, extra=[], env={"GOMP_SPINCOUNT": "30000"}),
}


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CPBENCH_THREADS", "OMP_WAIT_POLICY",
                                                            "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(arm: str, args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, summed train_seconds of the new rows' jobs, the 'loading backbone' line)."""
    import pandas as pd

    spec = ARMS[arm]
    with tempfile.TemporaryDirectory(prefix="cpbench-threads-") as res:
        code = WRAP.format(no_wait=spec["no_wait"], no_apply=spec["no_apply"])
        cmd = [sys.executable, "-c", code, *args, *spec["extra"], "--results", res]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**clean_env(), **spec.get("env", {})},
                              cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{arm}: {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        rows = pd.read_parquet(Path(res) / "shards")
        train = float(rows.drop_duplicates("job_key")["train_seconds"].sum())
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("loading backbone")), "")
    return wall, train, line


def torch_default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    return int(out)


class Load:
    """``n`` single-threaded busy loops for the duration of the block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from cpbench.threads import available_cpus, plan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("CPBENCH_DATA", str(REPO / "data")), help="data root (toy prepared)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", default="half", help="busy processes under load: half (default), full or a number")
    ap.add_argument("--arms", nargs="+", default=["torch-default", "cpbench"], choices=list(ARMS))
    ap.add_argument("--workloads", nargs="+", default=["coop-toy", "quickstart-coop"],
                    choices=["coop-toy", "quickstart-coop"])
    ap.add_argument("--smoke", action="store_true", help="1 repeat, 1 epoch, quick start on one dataset")
    ap.add_argument("--json", type=Path, help="also append the measurements as JSON lines to this file")
    a = ap.parse_args(argv)
    cpus, why = available_cpus()
    n_load = {"half": max(1, cpus // 2), "full": cpus}.get(a.load) or int(a.load)
    repeats = 1 if a.smoke else a.repeats
    root = ["--root", a.root]
    missing = [d for d in TOY if not (Path(a.root) / d / ".cpbench.json").exists()]
    if missing:
        subprocess.run([sys.executable, "-m", "cpbench", "prepare", "toy", *root], env=clean_env(), cwd=REPO,
                       check=True, capture_output=True)
    workloads = {
        "coop-toy": ["run", "coop", "--backbone", "toy", "--dataset", "toy_shapes", "--seeds", "1", "--set",
                     f"epochs={1 if a.smoke else 4}", *root],
        "quickstart-coop": ["run", "coop", "--backbone", "toy", "--seeds", "1", *root,
                            *(["--dataset", "toy_shapes", "--set", "epochs=1"] if a.smoke else ["--dataset", *TOY])],
    }
    measured: dict[tuple, list[tuple[float, float]]] = {}
    lines: dict[str, str] = {}
    started = time.time()
    for r in range(repeats):
        for load in (0, n_load):
            with Load(load):
                for w in a.workloads:
                    for arm in a.arms:
                        wall, train, line = run_cli(arm, workloads[w])
                        measured.setdefault((w, arm, load), []).append((wall, train))
                        lines[arm] = line
                        if a.json:
                            with open(a.json, "a") as fh:
                                fh.write(json.dumps({"workload": w, "arm": arm, "load": load, "repeat": r,
                                                     "wall_s": wall, "train_s": train}) + "\n")
                        print(f"  [{time.time() - started:6.0f} s] {w:15s} {arm:13s} load {load}: wall {wall:6.1f} s, "
                              f"train {train:6.2f} s", file=sys.stderr, flush=True)
    chosen = plan(None, env={})
    print(f"\nCPUs this process may use: {cpus} ({why}); torch default threads: {torch_default_threads()}; "
          f"cpbench chooses {chosen.threads}; competing load: {n_load} busy process(es); median of {repeats} run(s)")
    for arm, line in lines.items():
        print(f"  {arm}: {line}")
    print("\n| workload | figure | arm | quiet (s) | under load (s) | load / quiet |")
    print("|---|---|---|---|---|---|")
    for w in a.workloads:
        figure = 1 if w == "coop-toy" else 0  # train_seconds for the CoOp run, wall time for the Quick start step
        for arm in a.arms:
            q = statistics.median(v[figure] for v in measured[(w, arm, 0)])
            lo = statistics.median(v[figure] for v in measured[(w, arm, n_load)])
            print(f"| {w} | {'train_seconds' if figure else 'wall'} | {arm} | {q:.2f} | {lo:.2f} | {lo / q:.2f}x |")
    if "torch-default" in a.arms and "cpbench" in a.arms:
        print("\n| workload | load | torch-default / cpbench |")
        print("|---|---|---|")
        for w in a.workloads:
            figure = 1 if w == "coop-toy" else 0
            for load in (0, n_load):
                d = statistics.median(v[figure] for v in measured[(w, "torch-default", load)])
                c = statistics.median(v[figure] for v in measured[(w, "cpbench", load)])
                print(f"| {w} | {'quiet' if load == 0 else f'{load} busy'} | {d / c:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
