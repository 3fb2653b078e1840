"""The real OpenAI Python SDK against the demo (`tollgate serve --demo`'s
configuration and simulated upstream), on its usual paths: what a new user
sees must be what production answers look like.

Run by tests/e2e_sdk.rs, which passes the demo gateway's URL in
TOLLGATE_BASE_URL.
"""
import os
import sys

import openai
from openai import OpenAI

base = os.environ["TOLLGATE_BASE_URL"] + "/v1"
client = OpenAI(base_url=base, api_key="tg-demo-pro", max_retries=0)
msgs = [{"role": "user", "content": "Hello!"}]

r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=50)
assert r.choices[0].message.content and r.choices[0].finish_reason == "stop", r
assert r.usage.completion_tokens > 0, r.usage

# n choices, each cut at max_tokens: finish_reason "length".
r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=3, n=2)
assert [c.finish_reason for c in r.choices] == ["length", "length"], r
assert r.usage.completion_tokens == 6, r.usage

# The usual streaming loop: choices[0] on every chunk (no stray usage chunk).
text = ""
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=50, stream=True):
    text += chunk.choices[0].delta.content or ""
assert len(text) > 10, text

# Embeddings in the SDK's default encoding (it asks for base64 and decodes).
e = client.embeddings.create(model="text-embedding-3-small", input="hello")
vec = e.data[0].embedding
assert len(vec) == 8, vec
assert abs(vec[0] - 0.1) < 1e-6 and abs(vec[1] + 0.2) < 1e-6, vec

assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"

# The Responses API, not streamed and streamed.
resp = client.responses.create(model="gpt-4o-mini", input="Say hello", max_output_tokens=50)
assert resp.output_text, resp
assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0, resp.usage
events = list(client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True))
assert events[-1].type == "response.completed", events[-1]
deltas = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
assert deltas == events[-1].response.output_text, (deltas, events[-1])

# The raw response carries the gateway's request id.
raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs, max_tokens=5)
assert raw.headers.get("x-request-id"), raw.headers

# The route aliases are listed beside the models, and each answers alone.
ids = [m.id for m in client.models.list()]
assert "auto" in ids and "gpt-4o-mini" in ids, ids
alias = client.models.retrieve("auto")
assert alias.id == "auto" and alias.object == "model" and alias.owned_by == "tollgate", alias

# model="auto": routed by the example configuration's routes, by tier and
# task; the answer says which rule and which model served it.
enterprise = OpenAI(base_url=base, api_key="tg-demo-enterprise", max_retries=0)
code = [{"role": "user", "content": "Fix this Python bug: def f(): return 1/0"}]
raw = enterprise.chat.completions.with_raw_response.create(model="auto", messages=code, max_tokens=50)
assert raw.headers["x-tollgate-route"] == "auto/premium", raw.headers
assert raw.headers["x-tollgate-model"] == "claude-opus-4", raw.headers
r = raw.parse()
assert r.choices[0].message.content and r.usage.completion_tokens > 0, r

raw = enterprise.chat.completions.with_raw_response.create(
    model="auto", messages=msgs, max_tokens=50, stream=True)
assert raw.headers["x-tollgate-route"] == "auto/balanced", raw.headers
assert raw.headers["x-tollgate-model"] == "gpt-4o", raw.headers
text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
assert len(text) > 10, text

# A hint in metadata (never sent upstream) or in the header.
raw = client.chat.completions.with_raw_response.create(
    model="auto", messages=code, max_tokens=50, extra_body={"metadata": {"tollgate_route": "cheap"}})
assert raw.headers["x-tollgate-route"] == "auto/hint-cheap", raw.headers
assert raw.headers["x-tollgate-model"] == "gemini-2.0-flash", raw.headers
assert raw.parse().choices[0].message.content
text = ""
for chunk in client.chat.completions.create(
        model="auto", messages=msgs, max_tokens=50, stream=True,
        extra_headers={"x-tollgate-route": "cheap"}):
    text += chunk.choices[0].delta.content or ""
assert len(text) > 10, text

# An alias: one rule, the cheap models.
free = OpenAI(base_url=base, api_key="tg-demo-free", max_retries=0)
raw = free.chat.completions.with_raw_response.create(model="chat-cheap", messages=msgs, max_tokens=5)
assert raw.headers["x-tollgate-route"] == "chat-cheap/1", raw.headers
assert raw.headers["x-tollgate-model"] == "gemini-2.0-flash", raw.headers

print("python demo ok", openai.__version__)
