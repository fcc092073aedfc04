#!/usr/bin/env bash
# Many variants on one base, on a GPU machine: `eigenprune bench-serve` through the API at the
# SmolLM2 and Phi-2 shapes (random weights, bf16), and on the real SmolLM2 when its GGUF is
# given (with the evaluation row); `eigenprune bench` for the edit forms (factors vs dense).
#
#   scripts/bench_variants_gpu.sh BIN OUTDIR [SmolLM2.gguf] [rows: shapes|real|all]
#
# Each run's output goes to OUTDIR/<name>.txt (BENCHMARKS.md quotes them).
set -euo pipefail
bin=$1 out=$2 gguf=${3:-} rows=${4:-all}
mkdir -p "$out"
dev=(--device cuda:0)
if [ "$rows" != real ]; then
  # SmolLM2's shape: a variant's edit (rank 8 on k and v of 30 layers, bf16) is ~0.76 MB, so
  # a 49 MB device tier holds 64 of the 1,000 registered.
  "$bin" bench-serve --shape smollm2 "${dev[@]}" --variants 1,4,16,64 --registered 1000 \
    --cold 16 --edit-pool-mb 49 2>"$out/serve-smollm2.log" | tee "$out/serve-smollm2.txt"
  "$bin" bench-serve --shape phi2 "${dev[@]}" --variants 1,4,16,64 --registered 80 --cold 8 \
    2>"$out/serve-phi2.log" | tee "$out/serve-phi2.txt"
  for shape in smollm2 phi2; do
    "$bin" bench --shape "$shape" "${dev[@]}" --sweep-sequences 64 --sweep-batch 16 \
      --new-tokens 64 --variants 1,4,16,64 2>"$out/bench-$shape.log" | tee "$out/bench-$shape.txt"
  done
fi
if [ -n "$gguf" ] && [ "$rows" != shapes ]; then
  "$bin" bench-serve --model "$gguf" "${dev[@]}" --variants 1,3,16,64 --registered 200 \
    --cold 16 --eval-variants 16 2>"$out/serve-smollm2-real.log" | tee "$out/serve-smollm2-real.txt"
fi
