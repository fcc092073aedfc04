#!/usr/bin/env bash
# Many variants on one base, on a GPU machine: `eigenprune bench-serve` through the API at the
# SmolLM2 and Phi-2 shapes (random weights, bf16) and on the real SmolLM2 (its GGUF, with the
# evaluation row); `eigenprune bench` for the edit forms (factors vs dense).
#
#   scripts/bench_variants_gpu.sh BIN OUTDIR SmolLM2.gguf|- [STEP...]
#
# STEPs (default all): serve-smollm2 serve-phi2 bench-smollm2 bench-phi2 serve-real. Each
# step's table goes to OUTDIR/<step>.txt, its log to OUTDIR/<step>.log (BENCHMARKS.md quotes
# the tables).
set -euo pipefail
bin=$1 out=$2 gguf=$3
shift 3
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(serve-smollm2 serve-phi2 bench-smollm2 bench-phi2 serve-real)
mkdir -p "$out"
dev=(--device cuda:0)
for step in "${steps[@]}"; do
  case $step in
    # SmolLM2's shape: a variant's edit (rank 8 on k and v of 30 layers, bf16) is ~0.76 MB,
    # so a 49 MB device tier holds 64 of the 1,000 registered.
    serve-smollm2) args=(bench-serve --shape smollm2 --variants 1,4,16,64 --registered 1000
                         --cold 16 --edit-pool-mb 49) ;;
    serve-phi2) args=(bench-serve --shape phi2 --variants 1,4,16,64 --registered 80 --cold 8) ;;
    bench-smollm2|bench-phi2)
      args=(bench --shape "${step#bench-}" --no-svd-cpu --sweep-sequences 64 --sweep-batch 16
            --new-tokens 64 --variants 1,4,16,64) ;;
    serve-real) args=(bench-serve --model "$gguf" --variants 1,3,16,64 --registered 200
                      --cold 16 --eval-variants 16 --rounds 9) ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "== $step: ${args[*]}"
  "$bin" "${args[@]}" "${dev[@]}" 2>"$out/$step.log" | tee "$out/$step.txt"
done
