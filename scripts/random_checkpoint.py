#!/usr/bin/env python3
"""A seeded random-weights HF checkpoint at a model's shape, for whole-job timings at a size no
real checkpoint here has (Phi-2's): config.json + model.safetensors (bf16) + tokenizer.json.

    python3 scripts/random_checkpoint.py --shape bench/shapes/phi2.json \
        --tokenizer tests/fixtures/phi/tokenizer.json --out /tmp/phi2-random

--tokenizer is a tokenizer.json (the fixtures' small byte-level BPE) or a .gguf whose tokenizer
is written out as tokenizer.json (`models/SmolLM2-135M-Instruct.Q4_1.gguf`: a real BPE, with
which rte's prompts are SmolLM2's length; needs the `gguf` package). Both eigenprune and the
PyTorch script read that one file, so prompts tokenise alike; the weights follow transformers'
own init.
"""
import argparse
import json
import os
import shutil

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = json.load(open(a.shape))
    cfg.update({"bos_token_id": 0, "eos_token_id": 0})
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(a.seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="100GB")
    if a.tokenizer.endswith(".gguf"):
        d, f = os.path.split(a.tokenizer)
        tok = transformers.AutoTokenizer.from_pretrained(d or ".", gguf_file=f)
        tok.backend_tokenizer.save(os.path.join(a.out, "tokenizer.json"))
    else:
        shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": a.out, "parameters": n, "files": sorted(os.listdir(a.out))}))


if __name__ == "__main__":
    main()
