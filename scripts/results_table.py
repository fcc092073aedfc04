#!/usr/bin/env python3
"""Prints RESULTS.md's tables from results/<model>/*.json (written by scripts/results.sh <model>).

    python3 scripts/results_table.py results/smollm2
"""
import json
import os
import re
import sys


def pct(c, n):
    return f"{c}/{n} = {100 * c / n:.2f}%"


def acc(e):
    s = pct(e["correct"], e["total"])
    if e.get("choice_correct") is not None:
        s += f" (choice {pct(e['choice_correct'], e['total'])})"
    return s


def main(d):
    rows = []
    for f in sorted(os.listdir(d)):
        if not f.endswith(".json"):
            continue
        name = f[:-5]
        try:
            r = json.load(open(os.path.join(d, f)))
        except json.JSONDecodeError:
            continue
        peak = ""
        tf = os.path.join(d, name + ".time")
        if os.path.exists(tf):
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(tf).read())
            peak = f"{int(m.group(1)) / 1024 / 1024:.2f} GiB" if m else ""
        secs = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(r["seconds"].items()))
        for p in r["portions"]:
            auto = ""
            if p.get("auto_dev"):
                grid = "; ".join(f"{g['portion']}: {g['accuracy']['correct']}" for g in p["auto_dev"]["grid"])
                auto = f" auto on dev ({p['auto_dev']['dev_size']}): {grid}"
            rows.append(f"| {name} | {r['task']} | {p['portion']}{auto} | {p['pruned']}/{r['candidates']} | "
                        f"{acc(r['accuracy_before'])} | {acc(p['accuracy_after'])} | {r['scored_examples']} | {secs} | {peak} |")
    print("| row | task | portion | pruned / candidates | before | after | scored examples | seconds per phase | peak memory |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/smollm2")
