"""The real OpenAI Python SDK against a gateway in front of misbehaving upstreams.

Run by tests/e2e_sdk_faults.rs, which serves one model per upstream behaviour
(`spaced` and `compact` answer well, their JSON written with and without
spaces; `cut-close`, `cut-chunked`, `silent` and `stalled` break their streams;
`malformed` sends one data: line that is not JSON) to clients `pro` and
`budget` (a small daily budget). Prints what it did, then "sdk ok".
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
from openai import OpenAI

base = os.environ["TOLLGATE_BASE_URL"] + "/v1"
pro = OpenAI(base_url=base, api_key="key-pro", max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "hello world"}]


def stream_text(client, model, **kw):
    """The SDK's usual loop: chunk.choices[0].delta.content, no guard."""
    text = ""
    for chunk in client.chat.completions.create(
            model=model, messages=msgs, max_tokens=20, stream=True, **kw):
        assert chunk.usage is None, chunk
        text += chunk.choices[0].delta.content or ""
    return text


# Usage is read however the upstream spaces its JSON; the usage chunk goes
# only to clients that ask for it.
for model in ("spaced", "compact"):
    r = pro.chat.completions.create(model=model, messages=msgs, max_tokens=20)
    assert r.choices[0].message.content == "Hi there!", r
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 3), r.usage
    assert stream_text(pro, model) == "Hi there!"
    chunks = list(pro.chat.completions.create(
        model=model, messages=msgs, max_tokens=20, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3, chunks[-1]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi there!", text

# Every stream that broke is an error, never a partial answer passed off as whole.
for model, code in (("cut-close", "stream_broken"), ("cut-chunked", "stream_broken"),
                    ("silent", "upstream_timeout"), ("stalled", "upstream_timeout")):
    try:
        text = stream_text(pro, model)
        sys.exit(f"{model}: a broken stream came back as a complete answer: {text!r}")
    except openai.APIError as err:
        assert err.code == code, (model, err.code, err)
        print(model, "->", type(err).__name__, err.code)

# The Responses API's stream too.
try:
    events = [e.type for e in pro.responses.create(model="cut-chunked", input="hello world", stream=True)]
    sys.exit(f"a broken Responses stream came back as complete: {events}")
except openai.APIError as err:
    assert err.code == "stream_broken", err
    print("responses cut-chunked ->", type(err).__name__, err.code)

# A line that is not JSON is dropped: the rest of the answer arrives whole.
assert stream_text(pro, "malformed") == "Hi there!"

# A daily budget holds under concurrent streams: each is settled with its usage.
budget = OpenAI(base_url=base, api_key="key-budget", max_retries=0, timeout=30)


def one(_):
    try:
        stream_text(budget, "spaced")
        return "ok"
    except openai.RateLimitError as err:
        assert err.code == "daily_budget_exceeded", err
        return "refused"


results = list(ThreadPoolExecutor(4).map(one, range(24)))
print("budget streams ok", results.count("ok"), "refused", results.count("refused"))
assert "refused" in results and "ok" in results, results
print("sdk ok", openai.__version__)
