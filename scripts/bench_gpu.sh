#!/usr/bin/env bash
# Runs `eigenprune bench` and scripts/bench_torch.py on the same GPU, shape by shape, and
# prints the side-by-side tables. Usage: scripts/bench_gpu.sh BIN OUTDIR [SHAPE...]
# (shapes: gpt2 smollm2 phi2). Raw JSON lines go to OUTDIR.
set -euo pipefail
BIN=$1 OUT=$2; shift 2
SHAPES=${*:-gpt2 smollm2 phi2}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for s in $SHAPES; do
  echo "== $s"
  "$BIN" bench --shape "$s" --device cuda:0 --json ${BENCH_ARGS:-} | tee "$OUT/$s.eigenprune.jsonl"
  python3 scripts/bench_torch.py --shape "bench/shapes/$s.json" --json ${TORCH_ARGS:-} | tee "$OUT/$s.torch.jsonl"
done
for s in $SHAPES; do
  echo
  python3 scripts/bench_side_by_side.py "$s" "$OUT/$s.eigenprune.jsonl" "$OUT/$s.torch.jsonl"
done
