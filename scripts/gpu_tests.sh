#!/usr/bin/env bash
# Builds the GPU test binaries here (no GPU needed) into .dev/gpu-tests, for running on a GPU
# machine from the repository root:
#   .dev/gpu-tests/gpu --test-threads 1
#   EIGENPRUNE_TEST_DEVICE=cuda .dev/gpu-tests/mixed_batch --test-threads 1
#   EIGENPRUNE_TEST_DEVICE=cuda .dev/gpu-tests/fixed_decode --test-threads 1
# (gpu: the GPU paths against the CPU's; mixed_batch: the mixed-variant batch through the
# fused row-edit kernel, every row against its variant alone; fixed_decode: decoding steps as
# CUDA graphs against the eager path's tokens and against the same steps run eagerly).
set -euo pipefail
eval "$(../shared/tools/cuda-toolchain.sh)"
mkdir -p .dev/gpu-tests
CARGO_TARGET_DIR=target/cuda cargo test --release --features cuda -p eigenprune-engine \
  --test gpu --test mixed_batch --test fixed_decode --no-run --message-format=json | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu", "mixed_batch", "fixed_decode"):
        shutil.copy(m["executable"], ".dev/gpu-tests/" + m["target"]["name"])
        print(".dev/gpu-tests/" + m["target"]["name"])'
