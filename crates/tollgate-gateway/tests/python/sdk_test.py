"""The real OpenAI Python SDK against a running tollgate gateway.

Run by tests/e2e_sdk.rs, which starts the gateway (tiers `pro` and `free`,
keys `key-pro` and `key-free`) and passes its URL in TOLLGATE_BASE_URL.
"""
import os
import sys

import openai
from openai import OpenAI

base = os.environ["TOLLGATE_BASE_URL"] + "/v1"
pro = OpenAI(base_url=base, api_key="key-pro", max_retries=0)
msgs = [{"role": "user", "content": "hello world"}]

# Non-streamed, with the raw response to see our rate-limit headers.
raw = pro.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs, max_tokens=50)
assert raw.headers["x-ratelimit-limit-requests"] == "100", raw.headers
assert "x-ratelimit-remaining-tokens" in raw.headers
r = raw.parse()
assert r.choices[0].message.content, r
assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (9, 16), r.usage

# Streamed, with usage requested: text in chunks, usage in the last one.
chunks = list(pro.chat.completions.create(
    model="gpt-4o-mini", messages=msgs, max_tokens=50, stream=True,
    stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert len(text) > 10, text
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16, chunks[-1]

# Streamed without usage: the gateway asked for it upstream but does not pass it on.
chunks = list(pro.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=50, stream=True))
assert all(getattr(c, "usage", None) is None for c in chunks), chunks[-1]

# Embeddings and models.
e = pro.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
assert len(e.data) == 2
assert [m.id for m in pro.models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]

# Our errors map to the SDK's exception classes.
try:
    OpenAI(base_url=base, api_key="key-wrong", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=msgs)
    sys.exit("expected AuthenticationError")
except openai.AuthenticationError as err:
    assert err.code == "invalid_api_key", err

try:
    pro.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=100000)
    sys.exit("expected BadRequestError")
except openai.BadRequestError as err:
    assert err.code == "context_length_exceeded", err

try:
    pro.chat.completions.create(model="no-such-model", messages=msgs)
    sys.exit("expected NotFoundError")
except openai.NotFoundError as err:
    assert err.code == "model_not_found", err

# The free tier allows 2 requests a minute: the third is a RateLimitError
# with Retry-After, streamed or not.
free = OpenAI(base_url=base, api_key="key-free", max_retries=0)
free.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=5)
free.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=5)
for stream in (False, True):
    try:
        free.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=5, stream=stream)
        sys.exit("expected RateLimitError")
    except openai.RateLimitError as err:
        assert err.code == "client_rpm_exceeded", err
        assert int(err.response.headers["retry-after"]) > 0, err.response.headers

# An upstream 429 also reaches the SDK as a RateLimitError.
try:
    pro.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "[sim:429]"}])
    sys.exit("expected RateLimitError")
except openai.RateLimitError as err:
    assert err.response.headers["retry-after"] == "1", err.response.headers

print("sdk ok", openai.__version__)
