#!/usr/bin/env python3
"""Loads every exported checkpoint under a directory (written by crates/engine/tests/export.rs
into target/export-check/<arch>/) with HF transformers and checks that its logits match the
ones eigenprune computed for the edited model (edited_logits.safetensors), to 1e-4. LoRA
adapters (<arch>-lora/) are loaded with PEFT onto their base (a path relative to the repository).

    python3 scripts/check_export.py target/export-check
"""
import os
import sys

import torch
import transformers
from safetensors.torch import load_file


def main(root):
    failed = 0
    for arch in sorted(os.listdir(root)):
        d = os.path.join(root, arch)
        if not os.path.exists(os.path.join(d, "edited_logits.safetensors")):
            continue
        exp = load_file(os.path.join(d, "edited_logits.safetensors"))
        if os.path.exists(os.path.join(d, "adapter_config.json")):
            import json
            import peft
            base = json.load(open(os.path.join(d, "adapter_config.json")))["base_model_name_or_path"]
            model = transformers.AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").float()
            model = peft.PeftModel.from_pretrained(model, d).eval()
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").float().eval()
        with torch.no_grad():
            logits = model(input_ids=exp["input_ids"]).logits
        diff = float((logits - exp["logits"]).abs().max())
        ok = diff < 1e-4
        failed += not ok
        print(f"{arch}: max |logit difference| {diff:.2e} {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/export-check")
