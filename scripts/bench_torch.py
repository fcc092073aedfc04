#!/usr/bin/env python3
"""What `eigenprune bench` measures, done with PyTorch + transformers on the same GPU.

    python3 scripts/bench_torch.py --shape bench/shapes/phi2.json [--json]

Seeded random weights of the shape's config (bf16 on the GPU), then, with the same row ids as
`eigenprune bench`:
  svd       per-head thin SVDs of every key matrix (f32, batched torch.linalg.svd), as eigenprune
            computes them; svd_full: torch.linalg.svd of each whole key matrix (the issue's figure)
  sweep     the attribution sweep: forward + backward over N x T tokens in batches, with the
            key-projection inputs and output gradients captured by hooks and every key singular
            value's score computed (max over tokens); sweep_plain: forward + backward only,
            with weight gradients, as a plain training step computes them
  decode_1  greedy generate(), 128 new tokens, batch 1
  decode_n  greedy generate(), 128 new tokens, batch 32 (one padded batch)
"""
import argparse
import json
import time

import torch
import transformers


def now():
    torch.cuda.synchronize()
    return time.perf_counter()


def key_weights(model, cfg):
    """[H*hd, d] key weight of every layer (bf16), and the module whose output holds the keys
    with the slice of that output that is the key."""
    d = cfg.hidden_size
    out = []
    if cfg.model_type == "gpt2":
        for blk in model.transformer.h:
            w = blk.attn.c_attn.weight  # Conv1D [d, 3d]
            out.append((w[:, d:2 * d].t(), blk.attn.c_attn, slice(d, 2 * d)))
    else:
        for layer in model.model.layers:
            k = layer.self_attn.k_proj
            out.append((k.weight, k, slice(None)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-sequences", type=int, default=1024)
    ap.add_argument("--sweep-tokens", type=int, default=32)
    ap.add_argument("--sweep-batch", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the decoding rows")
    a = ap.parse_args()

    rows = []

    def report(id_, what, seconds, rate=None, unit=None, note=""):
        r = dict(id=id_, what=what, seconds=seconds, rate=rate, unit=unit, note=note)
        rows.append(r)
        if a.json:
            print(json.dumps(r), flush=True)
        else:
            rate_s = f"{rate:.1f} {unit}" if rate else ""
            print(f"| {what} | {seconds:.3f} | {rate_s} | {note} |", flush=True)

    if not a.json:
        print(f"PyTorch {torch.__version__} + transformers {transformers.__version__}, "
              f"{torch.cuda.get_device_name()}, shape {a.shape}")
        print("| what | seconds | rate | notes |\n| --- | ---: | ---: | --- |")
    raw = json.load(open(a.shape))
    cfg = transformers.AutoConfig.for_model(**raw)
    torch.manual_seed(a.seed)
    t0 = now()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    report("random", "random weights (bf16)", now() - t0,
           note=f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")

    g = torch.Generator(device="cuda").manual_seed(a.seed)
    if not a.decode_only:
        keys = key_weights(model, cfg)
        heads = cfg.n_head if cfg.model_type == "gpt2" else cfg.num_key_value_heads
        hd = keys[0][0].shape[0] // heads

        def per_head_svds():
            out = []
            for w, _, _ in keys:
                e = w.float().reshape(heads, hd, -1).transpose(1, 2)  # [H, d, hd]
                out.append(torch.linalg.svd(e, full_matrices=False))
            return out

        per_head_svds()
        t0 = now()
        svds = per_head_svds()
        report("svd", "svd keys per head (torch.linalg.svd, f32)", now() - t0,
               note=f"{len(keys) * heads} heads of {keys[0][0].shape[1]}x{hd}")
        torch.linalg.svd(keys[0][0].float(), full_matrices=False)
        t0 = now()
        for w, _, _ in keys:
            torch.linalg.svd(w.float(), full_matrices=False)
        report("svd_full", "svd of each whole key matrix (torch.linalg.svd, f32)", now() - t0,
               note=f"{len(keys)} x {tuple(keys[0][0].shape)}")

        # The sweep.
        ids = torch.randint(0, cfg.vocab_size, (a.sweep_sequences, a.sweep_tokens),
                            generator=g, device="cuda")
        answer = min(4, a.sweep_tokens - 1)
        factors = [(u, s, vh) for (u, s, vh) in svds]  # u [H, d, r], s [H, r], vh [H, r, hd]

        def batch_loss(batch, embeds_grad):
            emb = model.get_input_embeddings()(batch)
            if embeds_grad:
                emb = emb.detach().requires_grad_()
            logits = model(inputs_embeds=emb).logits[:, -answer - 1:-1].float()
            return torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, -answer:].reshape(-1))

        def sweep(limit=None):
            captured = {}
            hooks = []
            for li, (_, module, sl) in enumerate(keys):
                def fwd(mod, inp, out, li=li, sl=sl):
                    captured[li] = [inp[0], None]
                    out.register_hook(lambda gr, li=li, sl=sl: captured[li].__setitem__(1, gr[..., sl]))
                hooks.append(module.register_forward_hook(fwd))
            best = [torch.full((heads * hd,), -float("inf"), device="cuda") for _ in keys]
            try:
                for bi, start in enumerate(range(0, a.sweep_sequences, a.sweep_batch)):
                    if limit is not None and bi >= limit:
                        break
                    batch = ids[start:start + a.sweep_batch]
                    batch_loss(batch, True).backward()
                    for li, (u, s, vh) in enumerate(factors):
                        x, gr = captured[li]
                        x = x.float().reshape(-1, x.shape[-1])
                        dx = torch.roll(x.reshape(batch.shape[0], -1, x.shape[-1]), 1, 0).reshape_as(x) - x
                        gr = gr.float().reshape(-1, heads, hd).transpose(0, 1)  # [H, N, hd]
                        a_ = torch.einsum("nd,hdr->hnr", dx, u)
                        gv = torch.bmm(gr, vh.transpose(1, 2))  # [H, N, r]
                        sc = (a_ * gv * s[:, None, :]).amax(1).reshape(-1)
                        best[li] = torch.maximum(best[li], sc)
            finally:
                for h in hooks:
                    h.remove()
            return best

        for p in model.parameters():
            p.requires_grad_(False)
        sweep(limit=1)
        t0 = now()
        sweep()
        dt = now() - t0
        n_tok = a.sweep_sequences * a.sweep_tokens
        report("sweep", "attribution sweep (bf16 model, f32 scores, hooks)", dt, n_tok / dt, "tok/s",
               f"{a.sweep_sequences} x {a.sweep_tokens} tokens, batch {a.sweep_batch}")
        for p in model.parameters():
            p.requires_grad_(True)

        def plain(limit=None):
            for bi, start in enumerate(range(0, a.sweep_sequences, a.sweep_batch)):
                if limit is not None and bi >= limit:
                    break
                batch_loss(ids[start:start + a.sweep_batch], False).backward()
                model.zero_grad(set_to_none=True)

        plain(limit=1)
        t0 = now()
        plain()
        dt = now() - t0
        report("sweep_plain", "forward + backward only (bf16, weight gradients)", dt, n_tok / dt,
               "tok/s", "no scores")
    for p in model.parameters():
        p.requires_grad_(False)

    # Greedy decoding.
    def decode(batch):
        prompt = torch.randint(0, cfg.vocab_size, (batch, a.prompt_tokens), generator=g,
                               device="cuda")
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                           pad_token_id=0)
            t0 = now()
            out = model.generate(prompt, max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
            dt = now() - t0
        return dt, (out.shape[1] - a.prompt_tokens) * batch

    def loop_decode(batch):
        """A hand-written greedy loop over the model's KV cache (no generate() overhead)."""
        prompt = torch.randint(0, cfg.vocab_size, (batch, a.prompt_tokens), generator=g,
                               device="cuda")
        with torch.no_grad():
            for n_new in (8, a.new_tokens):
                t0 = now()
                out = model(prompt, use_cache=True)
                for _ in range(n_new):
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                dt = now() - t0
        return dt, a.new_tokens * batch

    long = torch.randint(0, cfg.vocab_size, (1, min(512, getattr(cfg, "max_position_embeddings", None) or cfg.n_positions)), generator=g,
                         device="cuda")
    with torch.no_grad():
        times = []
        for _ in range(4):
            t0 = now()
            model(long, use_cache=True).logits[:, -1].argmax(-1).item()
            times.append(now() - t0)
    dt = sorted(times[1:])[1]
    report("ttft_512", "time to first token, batch 1 (bf16)", dt, long.shape[1] / dt,
           "prompt tok/s", f"{long.shape[1]}-token prompt: model() + argmax; median of 3 after a warm-up")

    dt, n = loop_decode(1)
    report("decode_1_loop", "greedy loop over the KV cache, batch 1 (bf16)", dt, n / dt, "tok/s",
           "model() + argmax per token, no generate()")
    dt, n = loop_decode(a.concurrent)
    report("decode_n_loop", f"greedy loop over the KV cache, batch {a.concurrent} (bf16)", dt,
           n / dt, "tok/s", "model() + argmax per token, no generate()")
    dt, n = decode(1)
    report("decode_1", "greedy generate(), batch 1 (bf16)", dt, n / dt, "tok/s",
           f"{a.prompt_tokens} prompt + {a.new_tokens} new tokens")
    dt, n = decode(a.concurrent)
    report("decode_n", f"greedy generate(), batch {a.concurrent} (bf16)", dt, n / dt, "tok/s",
           f"{a.concurrent} x {a.new_tokens} new tokens, one batch")


if __name__ == "__main__":
    main()
