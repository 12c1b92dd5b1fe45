"""CPU threads, measured side by side in one run: the threads and waiting policy ``cpbench run``
chooses (cpbench/threads.py) against the fixed alternatives, on a quiet machine and under a
competing CPU load (issues 17 and 29).

    python benchmarks/threads/run.py                        # the recorded table (about 40 minutes on 2 CPUs)
    python benchmarks/threads/run.py --smoke                # a short check that the script works (~3 min)
    python benchmarks/threads/run.py --epochs 20            # every workload with 20 epochs instead of its own

Workloads, each a fresh ``python -m cpbench run`` process with its own results folder; the figure is
the wall time of the whole process (what a user waits for), the jobs' ``train_seconds`` beside it:

- ``coop-toy-shapes``: ``run coop --backbone toy --dataset toy_shapes --seeds 1`` (200 epochs; the
  issue's example);
- ``quickstart-coop``: the Quick start's CoOp step, ``run coop --backbone toy --seeds 1`` on the four
  toy datasets;
- ``coop-tiny``: ``run coop --backbone tiny --pretrained none --dataset toy_shapes --seeds 1`` (a
  backbone of width 64: does it gain from more than one thread?).

Arms: ``cpbench`` is the plain command (its own choice); ``one-thread`` is ``--threads 1``;
``active`` and ``passive`` use every CPU this process may use (``--threads N``) with
``OMP_WAIT_POLICY=ACTIVE`` (spinning waits) and ``PASSIVE`` (sleeping waits: cpbench's choice
before issue 29); ``torch-default`` switches cpbench's choice off (torch's threads, OpenMP's own
waiting: a short spin, then sleep); ``passive-spin30k`` is ``passive`` with ``GOMP_SPINCOUNT=30000``.

Load: ``--load N`` single-threaded busy loops (default 2, the issue's "two busy loops") run during
the loaded measurements. Each cell is the median of ``--repeats`` runs; arms alternate within a
repeat so a drifting machine load hits them alike. The environment's OMP_NUM_THREADS,
CPBENCH_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT are removed for every run. The script prints
what each arm chose (its "loading backbone" line) and the ratios the acceptance of issue 29 asks
for: quiet, cpbench / the faster of one-thread and active (<= 1.15); loaded, cpbench / one-thread
(<= 1.5).
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

# the CLI with cpbench's thread choice switched off (arm torch-default)
WRAP = """
import sys
import cpbench.threads as t
t.prefer_passive_wait = lambda *a, **k: None
t.decide = lambda requested, width, here, env=None: t.plan(requested)
t.apply = lambda plan: None
from cpbench.cli import main
sys.argv = ["cpbench", *sys.argv[1:]]
main()
"""


def arms(cpus: int) -> dict[str, dict]:
    every = ["--threads", str(cpus)]
    return {
        "cpbench": dict(extra=[], env={}),
        "one-thread": dict(extra=["--threads", "1"], env={}),
        "active": dict(extra=every, env={"OMP_WAIT_POLICY": "ACTIVE"}),
        "passive": dict(extra=every, env={"OMP_WAIT_POLICY": "PASSIVE"}),
        "torch-default": dict(extra=[], env={}, wrap=True),
        "passive-spin30k": dict(extra=every, env={"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}),
    }


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "CPBENCH_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(spec: dict, args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, summed train_seconds of the new rows' jobs, the 'loading backbone' line)."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="cpbench-threads-") as res:
        head = [sys.executable, "-c", WRAP] if spec.get("wrap") else [sys.executable, "-m", "cpbench"]
        cmd = [*head, *args, *spec["extra"], "--results", res]
        t0 = time.perf_counter()
        # a fresh cache folder per run, as a newcomer's: the training-view store keys on the thread count,
        # so a shared cache would let later arms read what earlier ones computed (issue 31)
        env = {**clean_env(), **spec["env"], "CPBENCH_CACHE": str(Path(res) / "cache")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        rows = pd.read_parquet(Path(res) / "shards", columns=["job_key", "train_seconds"])
        train = float(rows.drop_duplicates("job_key")["train_seconds"].sum())
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("loading backbone")), "")
    return wall, train, line


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


def workloads(root: list[str], epochs: list[str], smoke: bool) -> dict[str, list[str]]:
    coop = ["run", "coop", "--seeds", "1", "--device", "cpu", *root, *epochs]
    return {
        "coop-toy-shapes": [*coop, "--backbone", "toy", "--dataset", "toy_shapes"],
        "quickstart-coop": [*coop, "--backbone", "toy", "--dataset", *(["toy_shapes"] if smoke else TOY)],
        "coop-tiny": [*coop, "--backbone", "tiny", "--pretrained", "none", "--dataset", "toy_shapes"],
    }


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from cpbench.threads import available_cpus

    cpus, why = available_cpus()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("CPBENCH_DATA", str(REPO / "data")), help="data root (toy prepared)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--load", type=int, default=2, help="busy loops during the loaded runs (default 2)")
    ap.add_argument("--arms", nargs="+", default=["cpbench", "one-thread", "active", "passive"],
                    choices=list(arms(cpus)))
    ap.add_argument("--loaded-arms", nargs="+",
                    help="arms measured under load (default: --arms); spinning arms under load take 8-27x longer")
    ap.add_argument("--workloads", nargs="+", default=["coop-toy-shapes", "quickstart-coop", "coop-tiny"],
                    choices=list(workloads([], [], False)))
    ap.add_argument("--epochs", type=int, help="train every workload this many epochs (default: its own)")
    ap.add_argument("--smoke", action="store_true", help="1 repeat, 2 epochs, the quick start on one dataset")
    ap.add_argument("--json", type=Path, help="also append the measurements as JSON lines to this file")
    a = ap.parse_args(argv)
    epochs = a.epochs or (2 if a.smoke else None)
    repeats = 1 if a.smoke else a.repeats
    root = ["--root", a.root]
    missing = [d for d in TOY if not (Path(a.root) / d / ".cpbench.json").exists()]
    if missing:
        subprocess.run([sys.executable, "-m", "cpbench", "prepare", "toy", *root], env=clean_env(), cwd=REPO,
                       check=True, capture_output=True)
    work = workloads(root, ["--set", f"epochs={epochs}"] if epochs else [], a.smoke)
    spec = arms(cpus)
    measured: dict[tuple, list[tuple[float, float]]] = {}
    chose: dict[tuple, str] = {}
    started = time.time()
    for r in range(repeats):
        for load in (0, a.load):
            with Load(load):
                for w in a.workloads:
                    for arm in (a.arms if load == 0 or not a.loaded_arms else a.loaded_arms):
                        wall, train, line = run_cli(spec[arm], work[w])
                        measured.setdefault((w, arm, load), []).append((wall, train))
                        chose[(w, arm, load)] = line.partition(", ")[2] or line
                        if a.json:
                            with open(a.json, "a") as fh:
                                fh.write(json.dumps({"workload": w, "arm": arm, "load": load, "repeat": r,
                                                     "epochs": epochs, "wall_s": wall, "train_s": train,
                                                     "chose": chose[(w, arm, load)]}) + "\n")
                        print(f"  [{time.time() - started:6.0f} s] {w:15s} {arm:15s} load {load}: wall {wall:6.1f} s, "
                              f"train {train:6.2f} s", file=sys.stderr, flush=True)

    def med(w, arm, load, i=0):
        return statistics.median(v[i] for v in measured[(w, arm, load)])

    print(f"\nCPUs this process may use: {cpus} ({why}); competing load: {a.load} busy loop(s); "
          f"epochs: {epochs or 'each workload its own'}; median of {repeats} run(s); figure: wall s (train s)")
    print("\n| workload | arm | quiet: wall (train) | chose | loaded: wall (train) | chose |")
    print("|---|---|---|---|---|---|")
    for w in a.workloads:
        for arm in a.arms:
            cells = [f"{med(w, arm, ld):.1f} ({med(w, arm, ld, 1):.1f}) | {chose[(w, arm, ld)]}"
                     if (w, arm, ld) in measured else "not measured | " for ld in (0, a.load)]
            print(f"| {w} | {arm} | {cells[0]} | {cells[1]} |")
    if {"cpbench", "one-thread", "active"} <= set(a.arms):
        print("\n| workload | quiet: cpbench / min(one-thread, active) (<= 1.15) | loaded: cpbench / one-thread (<= 1.5) |")
        print("|---|---|---|")
        for w in a.workloads:
            quiet = med(w, "cpbench", 0) / min(med(w, "one-thread", 0), med(w, "active", 0))
            loaded = med(w, "cpbench", a.load) / med(w, "one-thread", a.load)
            print(f"| {w} | {quiet:.2f}x | {loaded:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
