#!/usr/bin/env python3
"""Side-by-side table of `eigenprune bench --json` and `scripts/bench_torch.py --json` output.

    python3 scripts/bench_side_by_side.py SHAPE EIGENPRUNE.jsonl TORCH.jsonl
"""
import json
import sys

shape, ours_path, torch_path = sys.argv[1:4]


def rows(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            out[r["id"]] = r
    return out


ours, theirs = rows(ours_path), rows(torch_path)
PAIRS = [
    ("svd", "svd", "SVD of every key matrix, per head"),
    ("svd", "svd_full", "  vs torch SVD of each whole key matrix"),
    ("sweep", "sweep", "attribution sweep with scores"),
    ("sweep", "sweep_plain", "  vs torch forward + backward only"),
    ("decode_1", "decode_1", "greedy decoding, batch 1"),
    ("decode_1", "decode_1_loop", "  vs torch hand-written loop, batch 1"),
    ("decode_1_eager", "decode_1", "  eigenprune's eager steps vs torch generate()"),
    ("ttft_512", "ttft_512", "time to first token, 512-token prompt"),
    ("decode_n", "decode_n", "greedy decoding, 32 concurrent"),
    ("decode_n", "decode_n_loop", "  vs torch hand-written loop, batch 32"),
]


def fmt(r):
    if r is None:
        return "-"
    if r.get("rate"):
        return f"{r['seconds']:.3f} s ({r['rate']:,.0f} {r['unit']})"
    return f"{r['seconds']:.3f} s"


print(f"| {shape}: what | eigenprune | PyTorch | speed-up |")
print("| --- | ---: | ---: | ---: |")
for o, t, label in PAIRS:
    a, b = ours.get(o), theirs.get(t)
    ratio = f"{b['seconds'] / a['seconds']:.2f}x" if a and b and a["seconds"] > 0 else "-"
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
if "svd_cpu" in ours:
    print(f"\nCPU SVD (faer): {ours['svd_cpu']['seconds']:.3f} s; {ours['svd_cpu']['note']}")
