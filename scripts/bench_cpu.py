#!/usr/bin/env python3
"""CPU decoding speed, greedy, 128 new tokens, SmolLM2-135M-Instruct: eigenprune next to
llama.cpp (llama-cpp-python, same GGUF) and HF transformers (when torch is installed).
Prints a markdown table. Run on an otherwise idle machine:

    python3 scripts/bench_cpu.py [--threads 2] [--runs 3] [--gguf models/OTHER.gguf]
        [--baseline OTHER_BINARY] [--interleave]

--baseline adds a row for another eigenprune binary (an earlier build) decoding the same file
from quantised blocks in the same run. --interleave runs the quantised rows and llama.cpp in
turns, run by run (a shared VM's speed drifts over minutes), and prints their ratios.

--ttft instead times the first token of a 512-token prompt (batch 1): the prompt's forward and
the first token, the model already loaded.
"""
import argparse
import os
import re
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = "The capital of France is"
NEW = 128


BINARY = os.path.join(ROOT, "target/release/eigenprune")


def eigenprune(runs, quantized=False, binary=None):
    best = None
    for _ in range(runs):
        r = subprocess.run(
            [binary or BINARY, "generate", "--model", GGUF,
             "--prompt", PROMPT, "--max-tokens", str(NEW), "--ignore-eos"]
            + (["--quantized"] if quantized else []),
            capture_output=True, text=True, check=True)
        m = re.search(r"generation: (\d+) tokens in ([\d.]+)s \(([\d.]+) tok/s\)", r.stderr)
        n, secs = int(m.group(1)), float(m.group(2))
        assert n == NEW, r.stderr
        tps = n / secs
        best = tps if best is None else max(best, tps)
    if quantized:
        return best, "decoding from quantised blocks (the file's, or Q8_0), candle's quantised matmul"
    return best, "f32 weights (dequantised), candle CPU"


def llama_cpp_runner(threads):
    """One greedy run of llama.cpp on the loaded file per call (tok/s), or None when missing."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=GGUF, n_threads=threads, n_ctx=512, verbose=False)

    def once():
        llm.reset()
        tokens = llm.tokenize(PROMPT.encode(), add_bos=False)
        llm.eval(tokens)
        t0 = time.perf_counter()
        n = 0
        for tok in llm.generate(tokens, top_k=1, temp=0.0, reset=False):
            n += 1
            if n == NEW:
                break
        return n / (time.perf_counter() - t0)
    return once


def llama_cpp_note():
    import llama_cpp
    return f"llama-cpp-python {llama_cpp.__version__}, the GGUF's own weights"


def llama_cpp(runs, threads):
    once = llama_cpp_runner(threads)
    if once is None:
        return None, "llama-cpp-python not installed"
    return max(once() for _ in range(runs)), llama_cpp_note()


def interleaved(runs, threads, baseline):
    """eigenprune --quantized (and a baseline binary) and llama.cpp taking turns, run by run, so
    that a shared machine's slower minutes fall on all of them; best of `runs` each."""
    rows = [("eigenprune --quantized", lambda: eigenprune(1, quantized=True)[0])]
    if baseline:
        rows.append((f"baseline {os.path.basename(baseline)} --quantized",
                     lambda: eigenprune(1, quantized=True, binary=baseline)[0]))
    once = llama_cpp_runner(threads)
    if once is not None:
        rows.append(("llama.cpp", once))
    best = {}
    for _ in range(runs):
        for name, fn in rows:
            best[name] = max(best.get(name, 0.0), fn())
    ref = best.get("llama.cpp")
    print(f"| engine | tok/s (greedy, {NEW} new tokens, best of {runs}, runs interleaved) | ratio to llama.cpp |")
    print("| --- | --- | --- |")
    for name, _ in rows:
        ratio = f"{best[name] / ref:.2f}x" if ref else "n/a"
        print(f"| {name} | {best[name]:.1f} | {ratio} |", flush=True)


# About 512 tokens in both tokenizers (each run prints its own count).
LONG_PROMPT = "The quick brown fox jumps over the lazy dog near the river bank. " * 37


def eigenprune_ttft(runs):
    best = None
    for _ in range(runs):
        r = subprocess.run(
            [BINARY, "generate", "--model", GGUF,
             "--prompt", LONG_PROMPT, "--max-tokens", "1", "--ignore-eos"],
            capture_output=True, text=True, check=True)
        m = re.search(r"prompt: (\d+) tokens in ([\d.]+)s.*generation: (\d+) tokens in ([\d.]+)s", r.stderr)
        n, secs = int(m.group(1)), float(m.group(2)) + float(m.group(4))
        best = (n, secs) if best is None or secs < best[1] else best
    return best, "prompt forward on dense f32 weights (also with --quantized), candle CPU"


def llama_cpp_ttft(runs, threads):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None, "llama-cpp-python not installed"
    llm = Llama(model_path=GGUF, n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                n_batch=1024, verbose=False)
    tokens = llm.tokenize(LONG_PROMPT.encode(), add_bos=True)
    best = None
    for _ in range(runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        llm.sample(top_k=1, temp=0.0)
        secs = time.perf_counter() - t0
        best = (len(tokens), secs) if best is None or secs < best[1] else best
    import llama_cpp
    return best, f"llama-cpp-python {llama_cpp.__version__}, the GGUF's own weights"


def transformers_cpu(runs, threads):
    try:
        import torch
        import transformers
    except ImportError:
        return None, "torch/transformers not installed"
    torch.set_num_threads(threads)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF), torch_dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        tps = (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)
        best = tps if best is None else max(best, tps)
    return best, f"transformers {transformers.__version__}, torch {torch.__version__}, f32"


def main():
    global GGUF
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--ttft", action="store_true", help="time to first token, 512-token prompt")
    ap.add_argument("--baseline", help="another eigenprune binary, a row decoding with --quantized")
    ap.add_argument("--interleave", action="store_true",
                    help="quantised decoding and llama.cpp run by run in turns (no dense row)")
    a = ap.parse_args()
    GGUF = a.gguf
    if a.ttft:
        print(f"| engine | prompt tokens | time to first token, s (best of {a.runs}) | notes |")
        print("| --- | --- | --- | --- |")
        for name, fn in [("eigenprune", lambda: eigenprune_ttft(a.runs)),
                         ("llama.cpp", lambda: llama_cpp_ttft(a.runs, a.threads))]:
            best, note = fn()
            n, secs = best if best else ("n/a", None)
            print(f"| {name} | {n} | {'n/a' if secs is None else f'{secs:.3f}'} | {note} |", flush=True)
        return
    if a.interleave:
        interleaved(a.runs, a.threads, a.baseline)
        return
    print(f"| engine | tok/s (greedy, {NEW} new tokens, best of {a.runs}) | notes |")
    print("| --- | --- | --- |")
    rows = [("eigenprune", lambda: eigenprune(a.runs)),
            ("eigenprune --quantized", lambda: eigenprune(a.runs, quantized=True))]
    if a.baseline:
        rows.append((f"baseline {os.path.basename(a.baseline)} --quantized",
                     lambda: eigenprune(a.runs, quantized=True, binary=a.baseline)))
    rows += [("llama.cpp", lambda: llama_cpp(a.runs, a.threads)),
             ("HF transformers", lambda: transformers_cpu(a.runs, a.threads))]
    for name, fn in rows:
        tps, note = fn()
        print(f"| {name} | {'n/a' if tps is None else f'{tps:.1f}'} | {note} |", flush=True)


if __name__ == "__main__":
    main()
