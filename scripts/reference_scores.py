#!/usr/bin/env python3
"""A reference implementation of eigenpruning's scores, written from docs/eigenpruning.md with
torch + HF transformers, for the parity test (crates/engine/tests/reference.rs).

For each fixture model in tests/fixtures/{llama,gpt2}, on the fixed data set below (no shuffle,
batches of B in order, left padding; each row the prompt and the answer but its last token,
which predicts nothing), it writes tests/fixtures/<arch>/reference_scores.safetensors:
  scores.<layer>   [heads, d_head]  signed max over examples and real tokens of
                   s_i * (U[:, i] . dx) * (Vh[i, :] . g), key components, input = normed
  input_mean.<layer> [d_model]      mean of xhat over the real tokens
  selected         [n] int64        flat indices (layer, head, i order) pruned at PORTION

    python3 scripts/reference_scores.py tests/fixtures
"""
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer

B = 4
PORTION = 0.25
ROWS = [(f"{i} x 7 =", f" {i * 7}") for i in range(12)]


def effective_key_matrices(model, arch):
    """Per layer: list over heads of E_h [d_model, d_head] (norm scale folded, LN centred)."""
    cfg = model.config
    out = []
    if arch == "gpt2":
        d = cfg.n_embd
        hd = d // cfg.n_head
        for blk in model.transformer.h:
            w_k = blk.attn.c_attn.weight[:, d:2 * d].double()  # Conv1D: [in, out]
            gamma = blk.ln_1.weight.double()
            e = gamma[:, None] * w_k
            e = e - e.mean(dim=0, keepdim=True)  # C = I - 11^T/d
            out.append([e[:, h * hd:(h + 1) * hd] for h in range(cfg.n_head)])
    else:
        hd = cfg.head_dim
        for blk in model.model.layers:
            w_k = blk.self_attn.k_proj.weight.double().T  # [in, out]
            gamma = blk.input_layernorm.weight.double()
            e = gamma[:, None] * w_k
            out.append([e[:, h * hd:(h + 1) * hd] for h in range(cfg.num_key_value_heads)])
    return out


def norm_and_key_modules(model, arch):
    if arch == "gpt2":
        return [(b.ln_1, b.attn.c_attn) for b in model.transformer.h]
    return [(b.input_layernorm, b.self_attn.k_proj) for b in model.model.layers]


def normalise(x, arch, eps):
    x = x.float()
    if arch == "gpt2":
        x = x - x.mean(-1, keepdim=True)
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def main(root):
    for arch in ["llama", "gpt2"]:
        d = os.path.join(root, arch)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").float().eval()
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        eps = model.config.layer_norm_epsilon if arch == "gpt2" else model.config.rms_norm_eps
        svds = []
        for heads in effective_key_matrices(model, arch):
            layer = []
            for e in heads:
                u, s, vh = torch.linalg.svd(e, full_matrices=False)
                layer.append((u.float(), s.float(), vh.float()))
            svds.append(layer)
        n_layers = len(svds)
        best = [torch.full((len(svds[l]), svds[l][0][1].numel()), -float("inf")) for l in range(n_layers)]
        input_sum = [None] * n_layers
        n_tokens = 0
        kd = model.config.n_embd if arch == "gpt2" else None
        for start in range(0, len(ROWS) - 1, B):
            batch = ROWS[start:start + B]
            if len(batch) < 2:
                continue
            seqs = []
            for p, a in batch:
                pi = tok.encode(p, add_special_tokens=True).ids
                ai = tok.encode(a, add_special_tokens=False).ids
                seqs.append((pi, ai))
            width = max(len(p) + len(a) - 1 for p, a in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, (p, a) in enumerate(seqs):
                row = p + a[:-1]
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            resid, keys = {}, {}
            handles = []
            for l, (norm, kmod) in enumerate(norm_and_key_modules(model, arch)):
                handles.append(norm.register_forward_hook(
                    lambda m, inp, out, l=l: resid.__setitem__(l, inp[0].detach())))

                def khook(m, inp, out, l=l):
                    out.retain_grad()
                    keys[l] = out
                handles.append(kmod.register_forward_hook(khook))
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            logp = torch.log_softmax(logits.float(), -1)
            loss = 0.0
            for r, (p, a) in enumerate(seqs):
                base = width - (len(p) + len(a) - 1) + len(p) - 1
                ce = -sum(logp[r, base + i, t] for i, t in enumerate(a)) / len(a)
                loss = loss + ce / len(seqs)
            loss.backward()
            for h in handles:
                h.remove()
            real = mask.bool()
            pair = real & torch.roll(real, 1, dims=0)
            n_tokens += int(real.sum())
            for l in range(n_layers):
                x = normalise(resid[l], arch, eps)
                dx = torch.roll(x, 1, dims=0) - x
                g = keys[l].grad
                if arch == "gpt2":
                    g = g[..., kd:2 * kd]
                s_in = (x * real[..., None]).sum((0, 1)).double()
                input_sum[l] = s_in if input_sum[l] is None else input_sum[l] + s_in
                for h, (u, s, vh) in enumerate(svds[l]):
                    hd = vh.shape[1]
                    gh = g[..., h * hd:(h + 1) * hd]
                    sc = s * (dx @ u) * (gh @ vh.T)  # [B, T, r]
                    sc = sc.masked_fill(~pair[..., None], -float("inf"))
                    best[l][h] = torch.maximum(best[l][h], sc.amax((0, 1)).detach())
        flat = torch.cat([b.flatten() for b in best])
        order = sorted(range(flat.numel()), key=lambda i: (float(flat[i]), i))
        selected = torch.tensor(sorted(order[:int(flat.numel() * PORTION)]), dtype=torch.long)
        out = {"selected": selected}
        for l in range(n_layers):
            out[f"scores.{l}"] = best[l].contiguous()
            out[f"input_mean.{l}"] = (input_sum[l] / n_tokens).float().contiguous()
        save_file(out, os.path.join(d, "reference_scores.safetensors"))
        print(arch, "scores", [float(b.abs().max()) for b in best], "selected", selected.numel())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
