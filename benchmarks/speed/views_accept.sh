#!/bin/bash
# Issue 31 acceptance: coop then kgcoop with the training-view store against the same runs with
# --no-cache (random ViT-B/32, toy_shapes, 2 epochs, seed 1), then a second kgcoop pair back to
# back. Needs `cpbench prepare toy` under $ROOT. Prints the rows; compare accuracies and
# train_seconds (benchmarks/speed/README.md, Speed III, holds the recorded figures).
#   ROOT=data WORK=/tmp/i31 bash benchmarks/speed/views_accept.sh
ROOT=${ROOT:-data}
WORK=${WORK:-/tmp/cpbench-views-accept}
export CPBENCH_CACHE=$WORK/cache-acc
rm -rf "$WORK/cache-acc" "$WORK"/res-*
C="--backbone ViT-B-32 --pretrained none --dataset toy_shapes --seeds 1 --set epochs=2 --root $ROOT"
for m in coop kgcoop; do cpbench run $m $C --results "$WORK/res-on"; uptime; done
for m in coop kgcoop; do cpbench run $m $C --results "$WORK/res-off" --no-cache; uptime; done
cpbench run kgcoop $C --results "$WORK/res-on2" --force; uptime
cpbench run kgcoop $C --results "$WORK/res-off2" --force --no-cache; uptime
cpbench cache
python - "$WORK" <<'PY'
import sys
import pandas as pd
w = sys.argv[1]
for on, off in (("res-on", "res-off"), ("res-on2", "res-off2")):
    a, b = (pd.read_parquet(f"{w}/{d}/shards").sort_values(["method", "subset"]) for d in (on, off))
    for m in sorted(set(a.method)):
        x, y = a[a.method == m], b[b.method == m]
        print(on, m, "identical accuracies:", list(x.correct) == list(y.correct), list(x.accuracy),
              "train_seconds store %.2f no-cache %.2f" % (x.train_seconds.iloc[0], y.train_seconds.iloc[0]))
PY
