#!/usr/bin/env bash
# Re-runs every row of RESULTS.md on the real SmolLM2-135M-Instruct (CPU). Each row writes
# results/smollm2/<row>.json (the `prune --json` object) and <row>.time (GNU time -v: peak memory).
# Usage: scripts/results-smollm2.sh [row ...]   (no argument: every row, in order)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-smollm2.sh
bin=${EIGENPRUNE_BIN:-./target/release/eigenprune}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
out=results/smollm2
mkdir -p "$out"
grid=0.05,0.1,0.2,0.3

declare -A rows=(
  [int-mult]="--task int-mult --portion $grid"
  [int-mult-seed1]="--task int-mult --portion 0.2 --seed 1"
  [int-mult-seed2]="--task int-mult --portion 0.2 --seed 2"
  [int-mult-random]="--task int-mult --portion 0.2 --method random"
  [int-mult-smallest]="--task int-mult --portion 0.2 --method smallest"
  [int-mult-auto]="--task int-mult --portion auto"
  [copa]="--task copa --portion $grid"
  [cb]="--task cb --portion $grid --scoring-batches 20"
  [rte]="--task rte --portion 0.2 --scoring-batches 20"
  [int-sum]="--task int-sum --portion $grid --scoring-batches 100"
  [copa-seed1]="--task copa --portion 0.2 --seed 1"
  [copa-seed2]="--task copa --portion 0.2 --seed 2"
  [copa-random]="--task copa --portion 0.2 --method random"
  [copa-smallest]="--task copa --portion 0.2 --method smallest"
)
order=(int-mult int-mult-seed1 int-mult-seed2 int-mult-random int-mult-smallest int-mult-auto
       copa cb rte int-sum copa-seed1 copa-seed2 copa-random copa-smallest)
[ $# -gt 0 ] && order=("$@")
for row in "${order[@]}"; do
  args=${rows[$row]:?unknown row $row}
  echo "== $row: eigenprune prune --model $model $args --json" >&2
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$out/$row.time" "$bin" prune --model "$model" $args --json \
    > "$out/$row.json" 2> "$out/$row.log"
  tail -c 300 "$out/$row.json" >&2; echo >&2
done
