#!/usr/bin/env python3
"""A GGUF's byte-level BPE vocabulary and merges written as a tokenizer.json, with the `gguf` and
`tokenizers` packages only (no torch), for `scripts/random_checkpoint.py --tokenizer`: prompts then
tokenise to a real BPE's lengths on both sides of a whole-job timing.

    python3 -m pip install gguf tokenizers   # the two packages it needs
    python3 scripts/gguf_tokenizer.py models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/tokenizer.json
"""
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def strings(reader, key):
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def main():
    src, out = sys.argv[1], sys.argv[2]
    reader = GGUFReader(src)
    kind = bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode()
    if kind != "gpt2":
        sys.exit(f"{src}: tokenizer model {kind!r}, not a byte-level BPE (gpt2)")
    tokens = strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(out)
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
