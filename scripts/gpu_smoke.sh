#!/usr/bin/env bash
# On a GPU machine: the CUDA build runs the engine and the service on the GPU.
# Usage: scripts/gpu_smoke.sh BIN   (BIN: a `--features cuda` build of eigenprune)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/gpu_smoke.sh BIN}
fx=tests/fixtures/llama
echo "== greedy generation, CPU then GPU (same tokens expected)"
"$bin" generate --model $fx --prompt "The capital" --max-tokens 8 --device cpu
"$bin" generate --model $fx --prompt "The capital" --max-tokens 8 --device cuda:0
echo "== a pruning job on the GPU (int-mult on the tiny fixture)"
"$bin" prune --model $fx --task int-mult --portion 0.2 --scoring-batches 4 --device cuda:0 --json
echo "== the service on the GPU: /metrics reports GPU memory"
data=$(mktemp -d)
"$bin" serve --data-dir "$data" --preload $fx --device cuda:0 --bind 127.0.0.1:18080 &
pid=$!
for _ in $(seq 60); do curl -sf localhost:18080/ready >/dev/null && break; sleep 1; done
curl -s localhost:18080/v1/completions -H 'content-type: application/json' \
  -d "{\"model\": \"$fx\", \"prompt\": \"The capital\", \"max_tokens\": 4, \"temperature\": 0}"
echo
curl -s localhost:18080/metrics | grep -E "gpu_memory|resident"
kill $pid
