"""Drives a running eigenprune service with the official `openai` Python client, unchanged.

Usage: python3 scripts/openai_client_check.py BASE_URL MODEL
Exits non-zero (with the failing check) if any response does not parse or does not agree.
Run by tests/openai_client.rs against a server it starts; CI installs `openai` first.
"""

import sys

import openai


def main(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

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

    # Errors arrive as the client's typed exceptions, with the service's stable code.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, n=99)
        raise AssertionError("n = 99 was accepted")
    except openai.UnprocessableEntityError as e:
        assert e.code == "invalid_n", e.body
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body

    print(f"openai {openai.__version__}: every check passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
