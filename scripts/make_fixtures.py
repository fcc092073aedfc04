#!/usr/bin/env python3
"""Writes tiny, randomly initialised HF checkpoints and their expected outputs for parity tests.

For each architecture, tests/fixtures/<name>/ gets:
  config.json, model.safetensors   (save_pretrained, float32)
  tokenizer.json                   (a small byte-level BPE trained here)
  expected.safetensors             input_ids [B,T] (i64), attention_mask [B,T] (i64),
                                   logits [B,T,V], and k_grad.<layer> [B,T,n_kv*head_dim]:
                                   dL/d(key projection output) for
                                   L = mean next-token cross-entropy over real (unmasked) targets.

Run with torch and transformers installed (the GPU machine has both):
    python3 scripts/make_fixtures.py tests/fixtures [ARCH ...]
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 320
B, T = 2, 9

CONFIGS = {
    "gpt2": transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    ),
    "phi": transformers.PhiConfig(
        vocab_size=VOCAB, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, partial_rotary_factor=0.4, max_position_embeddings=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False,
    ),
    "llama": transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
    ),
    "qwen2": transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
    ),
    "mistral": transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        sliding_window=4, tie_word_embeddings=False,
    ),
    # Local and global layers with their own rotary bases, a window shorter than the inputs,
    # and a query scale that is not head_dim.
    "gemma3": transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
    ),
}
MODEL_CLASSES = {
    "gpt2": transformers.GPT2LMHeadModel,
    "phi": transformers.PhiForCausalLM,
    "llama": transformers.LlamaForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "gemma3": transformers.Gemma3ForCausalLM,
}

CORPUS = [
    "The capital of France is Paris.",
    "Premise: the cat sat on the mat. Hypothesis: a cat sat.",
    "12 x 7 = 84, 3 + 4 = 7, 19 x 19 = 361.",
    "Does the premise entail, contradict or is neutral to the hypothesis?",
] * 20


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def key_outputs(name, model):
    """Modules whose output holds the keys, and how to slice the keys out of it."""
    layers = model.transformer.h if name == "gpt2" else model.model.layers
    out = []
    for layer in layers:
        if name == "gpt2":
            d = model.config.n_embd
            out.append((layer.attn.c_attn, lambda o, d=d: o[..., d:2 * d]))
        else:
            out.append((layer.self_attn.k_proj, lambda o: o))
    return out


def main(root, only):
    torch.manual_seed(0)
    tok = make_tokenizer()
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        cfg.bos_token_id = 0
        cfg.eos_token_id = 0
        torch.manual_seed(1234)
        model = MODEL_CLASSES[name]._from_config(cfg, attn_implementation="eager").float()
        # Random init is small; scale biases and norm weights so that every term matters.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname or "ln_" in pname:
                    p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        out_dir = os.path.join(root, name)
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save(os.path.join(out_dir, "tokenizer.json"))

        gen = torch.Generator().manual_seed(7)
        input_ids = torch.randint(1, VOCAB, (B, T), generator=gen)
        attention_mask = torch.ones(B, T, dtype=torch.long)
        attention_mask[1, :2] = 0  # left padding on the second row
        captured = []

        def hook(slicer):
            def fn(_module, _inp, output):
                output.retain_grad()
                captured.append((output, slicer))
            return fn

        handles = [m.register_forward_hook(hook(s)) for m, s in key_outputs(name, model)]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        targets = input_ids[:, 1:].clone()
        targets[attention_mask[:, 1:] == 0] = -100
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100
        )
        loss.backward()
        for h in handles:
            h.remove()
        tensors = {
            "input_ids": input_ids.contiguous(),
            "attention_mask": attention_mask.contiguous(),
            "logits": logits.detach().contiguous(),
            "loss": loss.detach().reshape(1),
        }
        for i, (out, slicer) in enumerate(captured):
            tensors[f"k_grad.{i}"] = slicer(out.grad).detach().contiguous()
        save_file(tensors, os.path.join(out_dir, "expected.safetensors"))
        print(name, "loss", float(loss), "->", out_dir)
    with open(os.path.join(root, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    # Usage: make_fixtures.py [ROOT [ARCH ...]]  (no ARCH: every architecture)
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures", sys.argv[2:])
