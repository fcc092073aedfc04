#!/usr/bin/env python3
"""A whole eigenpruning job written with PyTorch + transformers, for timing against
`eigenprune prune` on the same GPU (BENCHMARKS.md). Same work as eigenprune's defaults: key maps,
per-head SVDs of diag(gamma) W^T, a sweep in batches of 5 with the previous example as the
corruption, signed-max scores, the lowest `--portion` pruned, the edit folded into the weights
plus a mean bias, and the paper's metric (argmax equals every answer token) before and after.
Pruning math in f32, as eigenprune's.

    python3 scripts/whole_job_torch.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --task int-mult|rte [--portion 0.2] [--autocast] [--tf32] [--json]

--model may also be an HF checkpoint directory with a tokenizer.json (scripts/random_checkpoint.py:
Phi-2's shape with random weights; LayerNorm's shift is folded as eigenprune folds it).

Needs the `gguf` package next to transformers (GGUF loading). The int-mult split is drawn with
Python's random, so examples differ from eigenprune's (sizes and lengths are the same); rte uses
the same prompts and data (data/superglue/rte, train for scoring, validation for testing).
"""
import argparse
import json
import os
import random
import time

import torch
import transformers


def now():
    torch.cuda.synchronize()
    return time.perf_counter()


def task(name):
    if name == "int-mult":
        rows = [(f"{i} x {j} =", f" {i * j}", None, None) for i in range(20) for j in range(20)]
        random.Random(0).shuffle(rows)
        return rows[:320], rows[320:]
    words = [" entails", " contradicts"]
    labels = ["entailment", "not_entailment"]

    def load(split):
        out = []
        for line in open(os.path.join("data/superglue/rte", f"{split}.jsonl")):
            r = json.loads(line)
            if r.get("label") not in labels:
                continue
            prompt = (f"Premise: {r['premise']}\n\nHypothesis: {r['hypothesis']}\n\nDoes the premise "
                      "entail or contradict to the hypothesis?\nAnswer (entails or contradicts): The premise")
            k = labels.index(r["label"])
            out.append((prompt, words[k], words, k))
        return out
    return load("train"), load("validation")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="int-mult")
    ap.add_argument("--portion", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--scoring-batches", type=int, default=None,
                    help="score only the first N batches of the shuffled order (eigenprune's "
                         "--scoring-batches)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--autocast", action="store_true",
                    help="run the sweep's forward/backward under torch.autocast(bfloat16), as a "
                         "PyTorch user would for speed (the pruning math stays f32)")
    ap.add_argument("--tf32", action="store_true",
                    help="f32 matmuls on tensor cores (torch.set_float32_matmul_precision('high')), "
                         "as eigenprune's default GPU precision; sweep and evaluations")
    a = ap.parse_args()
    if a.tf32:
        torch.set_float32_matmul_precision("high")
    seconds = {}
    t0 = now()
    if os.path.isdir(a.model):  # an HF checkpoint with a tokenizer.json (random_checkpoint.py)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.model, "tokenizer.json"))
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).cuda()
    else:
        d, f = os.path.split(a.model)
        tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).cuda()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    seconds["load"] = now() - t0
    train, test = task(a.task)
    cfg = model.config
    layers = model.model.layers
    kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads

    def encode(prompt, answer):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        full = tok(prompt + answer, add_special_tokens=False)["input_ids"]
        return full, len(full) - len(p)

    def pack(rows):
        width = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), width), tok.eos_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, _) in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids.cuda(), mask.cuda()

    def positions(mask):
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # SVD of every key head's effective matrix E = diag(gamma) W_h^T; the norm's input xhat =
    # (x - beta) / gamma (beta: LayerNorm's shift, 0 for RMSNorm).
    t0 = now()
    svds = []
    for layer in layers:
        norm = layer.input_layernorm
        gamma = norm.weight.float()
        beta = norm.bias.float() if getattr(norm, "bias", None) is not None else torch.zeros_like(gamma)
        w = layer.self_attn.k_proj.weight.float().reshape(kv, hd, -1)  # [H, hd, d]
        e = (w * gamma).transpose(1, 2)  # [H, d, hd]
        u, s, vh = torch.linalg.svd(e, full_matrices=False)
        svds.append((u, s, vh, gamma, beta))
    seconds["svd"] = now() - t0

    # The sweep.
    t0 = now()
    order = list(range(len(train)))
    random.Random(42).shuffle(order)
    best = [torch.full((kv * hd,), -float("inf"), device="cuda") for _ in layers]
    sums = [torch.zeros(cfg.hidden_size, device="cuda") for _ in layers]
    count = 0
    captured = {}

    def hook(li):
        def fwd(mod, inp, out):
            captured[li] = [inp[0], None]
            out.register_hook(lambda g: captured[li].__setitem__(1, g))
        return fwd

    hooks = [layer.self_attn.k_proj.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    starts = list(range(0, len(order), a.batch_size))[:a.scoring_batches]
    for start in starts:
        batch = [train[i] for i in order[start:start + a.batch_size]]
        if len(batch) < 2:
            continue
        rows = [encode(p, ans) for p, ans, _, _ in batch]
        ids, mask = pack(rows)
        emb = model.get_input_embeddings()(ids).detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.autocast):
            logits = model(inputs_embeds=emb, attention_mask=mask, position_ids=positions(mask)).logits
        loss = 0
        for i, (r, n_ans) in enumerate(rows):
            w = ids.shape[1]
            lp = torch.log_softmax(logits[i, w - n_ans - 1:w - 1].float(), -1)
            loss = loss - lp.gather(1, ids[i, w - n_ans:, None]).mean() / len(rows)
        loss.backward()
        valid = mask.bool()
        pair = (valid & torch.roll(valid, 1, 0)).reshape(-1)
        count += int(valid.sum())
        for li, (u, s, vh, gamma, beta) in enumerate(svds):
            x, g = captured[li]
            xhat = ((x - beta) / gamma).reshape(-1, x.shape[-1])
            dx = (torch.roll(xhat.reshape(x.shape), 1, 0).reshape_as(xhat) - xhat)
            gh = g.float().reshape(-1, kv, hd).transpose(0, 1)  # [H, N, hd]
            sc = torch.einsum("nd,hdr->hnr", dx, u) * torch.bmm(gh, vh.transpose(1, 2)) * s[:, None, :]
            sc = sc.transpose(0, 1).reshape(-1, kv * hd)[pair]
            best[li] = torch.maximum(best[li], sc.amax(0))
            sums[li] += xhat[valid.reshape(-1)].sum(0)
    for h in hooks:
        h.remove()
    seconds["sweep"] = now() - t0

    # Select the lowest scores and edit the key maps (E -> E - s u v^T; mean effect to the bias).
    t0 = now()
    scores = torch.stack(best)  # [L, H*r]
    n = int(scores.numel() * a.portion)
    pruned = torch.zeros_like(scores, dtype=torch.bool).reshape(-1)
    pruned[scores.reshape(-1).argsort()[:n]] = True
    pruned = pruned.reshape(scores.shape)
    originals = []
    for li, (layer, (u, s, vh, gamma, beta)) in enumerate(zip(layers, svds)):
        keep = pruned[li].reshape(kv, hd).float()
        removed = torch.einsum("hdr,hr,hro->hdo", u, s * keep, vh)  # [H, d, hd] of E
        delta_w = -(removed / gamma[None, :, None]).transpose(1, 2).reshape(kv * hd, -1)
        k = layer.self_attn.k_proj
        originals.append((k.weight.data.clone(), None if k.bias is None else k.bias.data.clone()))
        k.weight.data += delta_w
        # x delta_w^T = -(xhat + beta / gamma) removed: the mean's share and beta's constant
        # go to the bias.
        mean = sums[li] / max(count, 1) + beta / gamma
        bias = torch.einsum("d,hdo->ho", mean, removed).reshape(-1)
        if k.bias is None:
            k.bias = torch.nn.Parameter(bias, requires_grad=False)
        else:
            k.bias.data += bias
    seconds["edit"] = now() - t0

    def evaluate():
        right = 0
        with torch.no_grad():
            for start in range(0, len(test), a.eval_batch_size):
                batch = test[start:start + a.eval_batch_size]
                rows = [encode(p, ans) for p, ans, _, _ in batch]
                ids, mask = pack(rows)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
                w = ids.shape[1]
                for i, (r, n_ans) in enumerate(rows):
                    pred = logits[i, w - n_ans - 1:w - 1].argmax(-1)
                    right += bool((pred == ids[i, w - n_ans:]).all())
        return right

    t0 = now()
    after = evaluate()
    seconds["eval_after"] = now() - t0
    for layer, (w, b) in zip(layers, originals):
        layer.self_attn.k_proj.weight.data = w
        layer.self_attn.k_proj.bias = None if b is None else torch.nn.Parameter(b)
    t0 = now()
    before = evaluate()
    seconds["eval_before"] = now() - t0
    out = {"task": a.task, "autocast": a.autocast, "tf32": a.tf32, "train": len(train), "test": len(test), "pruned": n,
           "candidates": scores.numel(), "before": before, "after": after,
           "seconds": seconds, "job_seconds": sum(v for k, v in seconds.items() if k != "load")}
    print(json.dumps(out) if a.json else out)


if __name__ == "__main__":
    main()
