#!/usr/bin/env bash
# Re-runs rows of RESULTS.md on a real model (CPU). Each row writes results/<model>/<row>.json
# (the `prune --json` object), <row>.time (GNU time -v: peak memory) and <row>.log (progress).
# Usage: scripts/results.sh smollm2|gemma3 [row ...]   (no row: every row of that model, in order)
# Rows whose arguments say `--device cuda:0` (names ending in -gpu, and rte) ran on the H200 with
# a `--features cuda` build (EIGENPRUNE_BIN); the rest on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
model_key=${1:?usage: scripts/results.sh smollm2|gemma3 [row ...]}
shift
bin=${EIGENPRUNE_BIN:-./target/release/eigenprune}
gpu="--device cuda:0"
declare -A rows
# controls NAME ARGS: rows NAME-seed1, NAME-seed2 (seeds 1 and 2), NAME-random and NAME-smallest
# (the same count of singular values at random, or the smallest), all at portion 0.2.
controls() {
  local name=$1 args=$2
  for s in 1 2; do rows[$name-seed$s]="$args --portion 0.2 --seed $s"; done
  for m in random smallest; do rows[$name-$m]="$args --portion 0.2 --method $m"; done
}
case $model_key in
  smollm2)
    ./scripts/fetch-smollm2.sh
    model=models/SmolLM2-135M-Instruct.Q4_1.gguf
    grid=0.05,0.1,0.2,0.3
    rows=(
      [int-mult]="--task int-mult --portion $grid"
      [int-mult-auto]="--task int-mult --portion auto"
      [copa]="--task copa --portion $grid"
      [cb]="--task cb --portion $grid --scoring-batches 20"
      [rte]="--task rte --portion $grid --scoring-batches 20 $gpu"
      [rte-cpu]="--task rte --portion 0.2 --scoring-batches 20"
      [int-sum]="--task int-sum --portion $grid --scoring-batches 100"
    )
    controls int-mult "--task int-mult"
    controls copa "--task copa"
    # On the H200: grids over the whole training split; seeds and controls (rte's on 100 batches).
    for t in cb rte; do rows[$t-gpu]="--task $t --portion $grid $gpu"; done
    controls cb-gpu "--task cb $gpu"
    controls copa-gpu "--task copa $gpu"
    controls rte-gpu "--task rte --scoring-batches 100 $gpu"
    order=(int-mult int-mult-seed1 int-mult-seed2 int-mult-random int-mult-smallest int-mult-auto
           copa cb rte int-sum copa-seed1 copa-seed2 copa-random copa-smallest
           cb-gpu rte-gpu cb-gpu-seed1 cb-gpu-seed2 cb-gpu-random cb-gpu-smallest
           copa-gpu-seed1 copa-gpu-seed2 copa-gpu-random copa-gpu-smallest
           rte-gpu-seed1 rte-gpu-seed2 rte-gpu-random rte-gpu-smallest rte-cpu)
    ;;
  gemma3)
    ./scripts/fetch-gemma3.sh
    model=models/gemma-3-270m-q4_k_m.gguf
    grid=0.1,0.2,0.3
    rows=(
      [int-mult]="--task int-mult --portion $grid"
      [int-mult-auto]="--task int-mult --portion auto"
      [int-mult-finetune]="--task int-mult --portion 0.2 --finetune-epochs 1 --finetune-lr 1e-5"
      [int-sum]="--task int-sum --portion $grid --scoring-batches 40"
      [rte]="--task rte --portion $grid --scoring-batches 20 $gpu"
    )
    controls int-mult "--task int-mult"
    # On this CPU, on the same scored subsets as the rows above.
    controls rte "--task rte --scoring-batches 20"
    controls int-sum "--task int-sum --scoring-batches 40"
    # On the H200, over the whole training split.
    for t in copa cb rte; do
      rows[$t-gpu]="--task $t --portion $grid $gpu"
      controls $t-gpu "--task $t $gpu"
    done
    order=(int-mult int-mult-seed1 int-mult-seed2 int-mult-random int-mult-smallest int-mult-auto
           int-mult-finetune int-sum rte copa-gpu cb-gpu rte-gpu
           copa-gpu-seed1 copa-gpu-seed2 copa-gpu-random copa-gpu-smallest
           cb-gpu-seed1 cb-gpu-seed2 cb-gpu-random cb-gpu-smallest
           rte-seed1 rte-seed2 rte-random rte-smallest
           int-sum-seed1 int-sum-seed2 int-sum-random int-sum-smallest)
    ;;
  *) echo "unknown model $model_key (smollm2, gemma3)" >&2; exit 2 ;;
esac
out=results/$model_key
mkdir -p "$out"
[ $# -gt 0 ] && order=("$@")
for row in "${order[@]}"; do
  args=${rows[$row]:?unknown row $row}
  echo "== $row: eigenprune prune --model $model $args --json" >&2
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$out/$row.time" "$bin" prune --model "$model" $args --json \
    > "$out/$row.json" 2> "$out/$row.log"
  tail -c 300 "$out/$row.json" >&2; echo >&2
done
