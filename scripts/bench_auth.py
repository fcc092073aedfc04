#!/usr/bin/env python3
"""Completion throughput with authentication on (--auth keys) against off (--auth none), in
one run: the same binary, model and load, rounds alternating off/on so drift falls on both.

    scripts/bench_auth.py BIN MODEL.gguf [ROUNDS] [REQUESTS] [CONCURRENCY] [MAX_TOKENS]

Prints tokens/s and requests/s per round, the median of the rounds' on/off ratios, and the
latency of a cheap authenticated request (GET /v1/models, sequential) to show the
per-request cost of the key lookup itself. Standard library only.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, key):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def start(binary, model, data_dir, auth):
    port = free_port()
    log = open(os.path.join(data_dir, f"serve-{auth}.log"), "a")
    p = subprocess.Popen(
        [binary, "serve", "--bind", f"127.0.0.1:{port}", "--auth", auth, "--workers", "0",
         "--data-dir", data_dir, "--preload", f"m={model}",
         "--quota-requests-per-minute", "0", "--quota-sequences", "0"],
        stdout=log, stderr=log, env={**os.environ, "EIGENPRUNE_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            return p, base
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def load(base, key, requests, concurrency, max_tokens):
    """`requests` completions, `concurrency` at a time; (tokens/s, requests/s)."""
    todo = list(range(requests))
    lock = threading.Lock()
    tokens = [0]

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            r = post(f"{base}/v1/completions",
                     {"model": "m", "prompt": f"Story {i}: once upon a time",
                      "max_tokens": max_tokens, "temperature": 0.8, "seed": i}, key)
            with lock:
                tokens[0] += r["usage"]["completion_tokens"]

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    return tokens[0] / dt, requests / dt


def models_latency(base, key, n=300):
    """Mean seconds of a sequential GET /v1/models."""
    req = urllib.request.Request(f"{base}/v1/models")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    t = time.perf_counter()
    for _ in range(n):
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
    return (time.perf_counter() - t) / n


def main():
    binary, model = sys.argv[1], sys.argv[2]
    rounds, requests, concurrency, max_tokens = (
        [int(a) for a in sys.argv[3:7]] + [3, 48, 8, 32][len(sys.argv[3:7]):])
    data_dir = tempfile.mkdtemp(prefix="eigenprune-bench-auth-")
    key = subprocess.run([binary, "keys", "create", "--user", "bench", "--data-dir", data_dir],
                         check=True, capture_output=True, text=True).stdout.strip()
    results = {"none": [], "keys": []}
    latency = {"none": [], "keys": []}
    try:
        for r in range(rounds):
            for auth in ("none", "keys"):
                p, base = start(binary, model, data_dir, auth)
                try:
                    k = key if auth == "keys" else None
                    load(base, k, concurrency, concurrency, 4)  # warm-up: load, first batch
                    tps, rps = load(base, k, requests, concurrency, max_tokens)
                    latency[auth].append(models_latency(base, k))
                finally:
                    p.terminate()
                    p.wait()
                results[auth].append(tps)
                print(f"round {r + 1} auth={auth:<4} {tps:8.1f} tokens/s {rps:6.2f} requests/s",
                      flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    off, on = statistics.median(results["none"]), statistics.median(results["keys"])
    ratios = [b / a for a, b in zip(results["none"], results["keys"])]
    print(f"median: auth none {off:.1f} tokens/s, auth keys {on:.1f} tokens/s; "
          f"median of the rounds' on/off ratios {statistics.median(ratios):.3f} "
          f"({requests} requests x {max_tokens} tokens, {concurrency} at a time, {rounds} rounds)")
    l_off, l_on = statistics.median(latency["none"]), statistics.median(latency["keys"])
    print(f"GET /v1/models: {l_off * 1e3:.3f} ms without a key, {l_on * 1e3:.3f} ms with one "
          f"(+{(l_on - l_off) * 1e6:.0f} us per request for the key's lookup)")


if __name__ == "__main__":
    main()
