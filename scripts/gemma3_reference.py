"""Reference outputs of the real Gemma-3-270M GGUF through HF transformers (its own GGUF
loader and tokenizer converter), for crates/engine/tests/gemma3.rs.

Writes OUT/gemma3_real.safetensors: for each prompt i, `ids.i` (the tokenizer's ids, BOS
included) and, at every position, the top 16 logits (`top_ids.i` [T,16], `top_logits.i`).
Run where transformers, torch and the `gguf` package are installed (float32 on the CPU):
    python3 scripts/gemma3_reference.py models/gemma-3-270m-q4_k_m.gguf OUT_DIR
"""
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

PROMPTS = [
    "The capital of France is",
    "Calculate 12 x 7:",
    "Premise: The cat sat on the mat.\nHypothesis: A cat sat.\nAnswer:",
    "  two spaces,\ttabs, café, 東京, and emoji 🙂!",
]


def main(gguf_path, out_dir):
    torch.set_num_threads(os.cpu_count())
    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32
    ).eval()
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        top = logits.topk(16, dim=-1)
        out[f"ids.{i}"] = ids[0].to(torch.int64).contiguous()
        out[f"top_ids.{i}"] = top.indices.to(torch.int64).contiguous()
        out[f"top_logits.{i}"] = top.values.contiguous()
        print(i, ids[0].tolist()[:24], tok.decode(logits[-1].argmax()))
    os.makedirs(out_dir, exist_ok=True)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "prompts": "\u241e".join(PROMPTS)}
    save_file(out, os.path.join(out_dir, "gemma3_real.safetensors"), metadata=meta)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
