"""lm-evaluation-harness (`local-completions`) against a running eigenprune service, on the
engine's own COPA/RTE prompts, and the per-choice log-likelihoods compared with
`eigenprune eval --scores`.

Usage:
  eigenprune serve --preload smol=models/SmolLM2-135M-Instruct.Q4_1.gguf &
  eigenprune eval --model models/SmolLM2-135M-Instruct.Q4_1.gguf --task copa --scores copa.jsonl
  python3 scripts/lm_eval_check.py http://127.0.0.1:8080 smol models/SmolLM2-135M-Instruct.Q4_1.gguf copa copa.jsonl [LIMIT]

Needs `pip install lm-eval==0.4.13 transformers gguf` (no torch). The tokenizer lm-eval uses is
built from the GGUF's own vocabulary and merges (byte-level BPE with single digits, as
SmolLM2's tokenizer.json). Prints the largest |lm-eval - engine| over every choice scored.
"""

import json
import os
import sys
import tempfile

import gguf
import lm_eval
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

PROMPTS = {
    "copa": {
        "path": "data/superglue/copa/validation.jsonl",
        "text": "Premise: {{premise}}\n{{'What was the cause of this?' if question == 'cause' else 'What happened as a result?'}}\n\nAlternative 1: {{choice1}}\nAlternative 2: {{choice2}}\n\nWhat is the correct alternative?\nThe correct alternative is alternative",
        "choices": [" 1", " 2"],
        "target": "{{label}}",
    },
    "rte": {
        "path": "data/superglue/rte/validation.jsonl",
        "text": "Premise: {{premise}}\n\nHypothesis: {{hypothesis}}\n\nDoes the premise entail or contradict to the hypothesis?\nAnswer (entails or contradicts): The premise",
        "choices": [" entails", " contradicts"],
        "target": "{{0 if label == 'entailment' else 1}}",
    },
}


def tokenizer_from_gguf(path: str, out_dir: str) -> None:
    r = gguf.GGUFReader(path)
    field = lambda k: r.fields[k]
    strings = lambda k: [bytes(field(k).parts[i]).decode("utf-8") for i in field(k).data]
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    types = [int(field("tokenizer.ggml.token_type").parts[i][0]) for i in field("tokenizer.ggml.token_type").data]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(tokens) if types[i] == 3],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    tok = Tokenizer.from_str(json.dumps(doc))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out_dir)


def main(base_url: str, model: str, gguf_path: str, task: str, engine_scores: str, limit: int | None) -> None:
    work = tempfile.mkdtemp()
    tok_dir = os.path.join(work, "tokenizer")
    tokenizer_from_gguf(gguf_path, tok_dir)
    p = PROMPTS[task]
    yaml = f"""task: eigenprune_{task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {os.path.abspath(p['path'])}
validation_split: validation
output_type: multiple_choice
doc_to_text: {json.dumps(p['text'])}
doc_to_choice: {json.dumps(p['choices'])}
doc_to_target: {json.dumps(p['target'])}
target_delimiter: ""
metric_list:
  - metric: acc
"""
    tasks_dir = os.path.join(work, "tasks")
    os.makedirs(tasks_dir)
    with open(os.path.join(tasks_dir, f"{task}.yaml"), "w") as f:
        f.write(yaml)
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={model},base_url={base_url}/v1/completions,tokenizer={tok_dir},"
        "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1",
        tasks=[f"eigenprune_{task}"],
        task_manager=lm_eval.tasks.TaskManager(include_path=tasks_dir),
        log_samples=True,
        limit=limit,
    )
    engine = {}
    with open(engine_scores) as f:
        for line in f:
            row = json.loads(line)
            engine[(row["example"], row["choice"])] = row["logprob"]
    worst, n = 0.0, 0
    for sample in results["samples"][f"eigenprune_{task}"]:
        for choice, resp in enumerate(sample["resps"]):
            ll = resp[0][0]
            gap = abs(ll - engine[(sample["doc_id"], choice)])
            worst, n = max(worst, gap), n + 1
    acc = results["results"][f"eigenprune_{task}"]["acc,none"]
    print(f"lm-eval {lm_eval.__version__} {task}: {n} choices, acc {acc:.4f}, largest |lm-eval - engine| = {worst:.2e} nats")
    assert worst < 1e-3, worst


if __name__ == "__main__":
    limit = int(sys.argv[6]) if len(sys.argv) > 6 else None
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], limit)
