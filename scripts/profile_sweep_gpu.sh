#!/usr/bin/env bash
# Kernel profile of the bench's bf16 sweep on a GPU machine: nsys capture of `eigenprune bench`
# (decoding in f32, so that the bf16 kernels mark the sweep), then scripts/nsys_kernels.py.
#   scripts/profile_sweep_gpu.sh BIN SHAPE [SEQUENCES]   (e.g. /tmp/ep phi2 128)
# NSYS and QDSTRM_IMPORTER default to the copies that ship inside Nsight Compute 2025.3.1 (the
# H200 machines have no Nsight Systems); LIBDW_DIR, if set, holds libdw.so.1 for the importer
# (Debian's libdw1 and libelf1, unpacked).
set -euo pipefail
BIN=$1 SHAPE=$2 SEQS=${3:-128}
H=/opt/nvidia/nsight-compute/2025.3.1/host
NSYS=${NSYS:-$H/target-linux-x64/nsys}
QDSTRM_IMPORTER=${QDSTRM_IMPORTER:-$H/linux-desktop-glibc_2_11_3-x64/QdstrmImporter}
out=/tmp/profile-$SHAPE
"$NSYS" profile -t cuda -o "$out" --force-overwrite true "$BIN" bench --shape "$SHAPE" \
  --device cuda:0 --dtype f32 --json --no-svd-cpu --variants 0 --new-tokens 8 --concurrent 2 \
  --sweep-sequences "$SEQS" > "$out.jsonl"
if [ ! -f "$out.nsys-rep" ]; then
  LD_LIBRARY_PATH=${LIBDW_DIR:-}:${LD_LIBRARY_PATH:-} "$QDSTRM_IMPORTER" -i "$out.qdstrm" > /dev/null
fi
"$NSYS" export --type sqlite -o "$out.sqlite" --force-overwrite true "$out.nsys-rep" > /dev/null
python3 "$(dirname "$0")/nsys_kernels.py" "$out.sqlite" bf16
