#!/usr/bin/env bash
# Every speed measurement recorded in benchmarks/speed/README.md, on the machine at hand.
#   bash benchmarks/speed/run_all.sh [DEVICE] [BACKBONE] > benchmarks/speed/results-run-all-<machine>.jsonl
# DEVICE: cpu (default) or cuda; BACKBONE: toy (default) or ViT-B-16 (random weights).
# Each measurement is a fresh process (peak memory is per process). Needs `cpbench prepare toy`
# for the evaluation benchmark (CPU/toy only).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEV="${1:-cpu}"
BB="${2:-toy}"
PY="${PYTHON:-.venv/bin/python}"
if [ "$DEV" = cpu ]; then PREC=fp32; else PREC="${PRECISION:-fp16}"; fi
for classes in 10 100 1000; do
  for mode in naive fast; do
    "$PY" benchmarks/speed/train_step.py --method coop --backbone "$BB" --classes "$classes" --mode "$mode" \
      --device "$DEV" --precision "$PREC" --steps 5
  done
done
for mode in naive fast; do
  "$PY" benchmarks/speed/train_step.py --method cocoop --backbone "$BB" --classes 100 --batch 1 --mode "$mode" \
    --device "$DEV" --precision "$PREC" --steps 5
  "$PY" benchmarks/speed/train_step.py --method promptsrc --backbone "$BB" --classes 100 --batch 4 --mode "$mode" \
    --device "$DEV" --precision "$PREC" --steps 5
done
if [ "$DEV" = cpu ] && [ "$BB" = toy ]; then
  "$PY" benchmarks/speed/eval_many.py --root "${CPBENCH_DATA:-data}" \
    --datasets toy_shapes toy_colour_shapes toy_pattern_shapes toy_scenes --seeds 1 2 3
fi
