#!/usr/bin/env bash
# Builds the GPU test binary here (no GPU needed) into .dev/gpu-tests, for running on a GPU
# machine: `.dev/gpu-tests/gpu --test-threads 1` from the repository root.
set -euo pipefail
eval "$(../shared/tools/cuda-toolchain.sh)"
out=$(CARGO_TARGET_DIR=target/cuda cargo test --release --features cuda -p eigenprune-engine \
  --test gpu --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
mkdir -p .dev/gpu-tests
cp "$out" .dev/gpu-tests/gpu
echo ".dev/gpu-tests/gpu"
