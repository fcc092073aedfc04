"""Drives a running eigenprune service with the official `openai` Python client, unchanged.

Usage: python3 scripts/openai_client_check.py BASE_URL MODEL [CHAT_MODEL]
MODEL is any served model; CHAT_MODEL one with a chat template (the real SmolLM2-Instruct),
which must answer "What is the capital of France?" with Paris.
Exits non-zero (with the failing check) if any response does not parse or does not agree.
Run by tests/api.rs against a server it starts; CI installs `openai` first.
"""

import os
import sys

import openai


def completions(client: openai.OpenAI, model: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert model in ids, ids

    greedy = dict(model=model, prompt="1 2 3", max_tokens=8, temperature=0, seed=7)
    done = client.completions.create(**greedy)
    text = done.choices[0].text
    assert done.object == "text_completion", done
    assert done.choices[0].finish_reason in ("stop", "length"), done
    assert done.usage.completion_tokens >= 1, done.usage

    # Streaming: the deltas join to the same greedy text.
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **greedy))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == text, (streamed, text)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [done.choices[0].finish_reason], reasons
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens, chunks[-1]

    # Streaming with echo and logprobs gives the same tokens and logprobs as without.
    scored_args = dict(model=model, prompt="1 2 3", max_tokens=4, temperature=0, echo=True, logprobs=2)
    whole = client.completions.create(**scored_args).choices[0]
    parts = [c.choices[0] for c in client.completions.create(stream=True, **scored_args) if c.choices]
    tokens = [t for p in parts if p.logprobs for t in p.logprobs.tokens]
    assert tokens == whole.logprobs.tokens, (tokens, whole.logprobs.tokens)
    assert "".join(p.text for p in parts) == whole.text, (parts, whole.text)
    lps = [x for p in parts if p.logprobs for x in p.logprobs.token_logprobs]
    assert all((a is None and b is None) or abs(a - b) < 1e-3 for a, b in zip(lps, whole.logprobs.token_logprobs))

    # n choices over a list of prompts, token-id prompts, echo with logprobs (lm-eval's shape).
    many = client.completions.create(model=model, prompt=["a", "b"], n=2, max_tokens=2, seed=1)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3], many
    by_ids = client.completions.create(model=model, prompt=[1, 2, 3], max_tokens=2, temperature=0)
    assert by_ids.choices[0].text is not None
    scored = client.completions.create(
        model=model, prompt="1 2 3 4", max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    lp = scored.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), lp
    assert len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset), lp
    # max_tokens = 1 with echo: one entry per prompt token plus the generated one.
    one = client.completions.create(model=model, prompt=[5, 6, 7], max_tokens=1, echo=True, logprobs=0)
    assert len(one.choices[0].logprobs.tokens) == 4, one
    # The chosen token is always in its top_logprobs.
    sampled = client.completions.create(model=model, prompt="1 2", max_tokens=8, temperature=1.5, logprobs=1, seed=3)
    lp = sampled.choices[0].logprobs
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert tok in top and len(top) <= 2, (tok, top)

    # Seeds: the same seed repeats; no seed draws one.
    seeded = [client.completions.create(model=model, prompt="a", max_tokens=12, temperature=1, seed=5).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1], seeded
    free = {client.completions.create(model=model, prompt="a", max_tokens=12, temperature=1).choices[0].text for _ in range(3)}
    assert len(free) > 1, free

    # Stop strings with non-ASCII characters, streamed and not.
    for stop in (["é"], ["日本", "\n\n"], "🙂"):
        r = client.completions.create(model=model, prompt="é 日本 🙂", max_tokens=6, stop=stop, seed=1)
        assert r.choices[0].finish_reason in ("stop", "length"), r
        s = list(client.completions.create(model=model, prompt="é 日本 🙂", max_tokens=6, stop=stop, seed=1, stream=True))
        assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text

    # Errors arrive as the client's typed exceptions, with the service's stable code.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, n=99)
        raise AssertionError("n = 99 was accepted")
    except openai.BadRequestError as e:
        assert e.code == "invalid_n" and e.param == "n", e.body
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, suffix="y")
        raise AssertionError("suffix was accepted")
    except openai.BadRequestError as e:
        assert e.code == "unsupported_parameter" and e.param == "suffix", e.body
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body


def chat(client: openai.OpenAI, model: str) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
    answer = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant", r
    assert "Paris" in answer, answer
    assert r.choices[0].finish_reason in ("stop", "length"), r

    chunks = list(client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer, (streamed, answer)
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, (chunks[-1], r.usage)

    n = client.chat.completions.create(model=model, messages=question, max_completion_tokens=8, n=3, seed=11,
                                       logprobs=True, top_logprobs=2)
    assert [c.index for c in n.choices] == [0, 1, 2], n
    for c in n.choices:
        content = c.logprobs.content
        assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), c
    # A seed repeats (one choice: rows that share a batch may round differently).
    seeded = [client.chat.completions.create(model=model, messages=question, max_completion_tokens=8, seed=11)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1], seeded

    stopped = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content, stopped

    try:
        client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}])
        raise AssertionError("an unknown role was accepted")
    except openai.BadRequestError as e:
        assert e.code == "invalid_role", e.body


def main(base_url: str, model: str, chat_model: str | None) -> None:
    # OPENAI_API_KEY (the client's own variable) is the key of a server with --auth keys.
    key = os.environ.get("OPENAI_API_KEY")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key or "unused", max_retries=0)
    if key:
        wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="ep-wrong", max_retries=0)
        try:
            wrong.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            assert e.code == "invalid_api_key", e.body
            assert "ep-wrong" not in str(e.body), e.body
    completions(client, model)
    if chat_model:
        chat(client, chat_model)
    print(f"openai {openai.__version__}: every check passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
