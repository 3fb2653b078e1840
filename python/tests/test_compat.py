"""llmratelimiter's public API, unchanged apart from the import line.

The examples of llmratelimiter 0.3.2's README run as written there with the
import line as their only change (and the Redis address of the test's own
server for ``localhost:6379``), against tollgate and, for comparison, against
llmratelimiter itself. The provider calls they make are stand-ins that
return a usage."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import textwrap
from types import SimpleNamespace

import pytest

import tollgate

LLMRATELIMITER_EXPORTS = [
    "AcquireResult",
    "RateLimitConfig",
    "RateLimitStatus",
    "RateLimiter",
    "RedisConnectionManager",
    "RetryConfig",
]


@pytest.fixture(params=["tollgate", "llmratelimiter"])
def lib(request):
    if request.param == "llmratelimiter":
        return pytest.importorskip("llmratelimiter")
    return tollgate


def test_every_name_llmratelimiter_exports_is_there():
    for name in LLMRATELIMITER_EXPORTS:
        assert hasattr(tollgate, name), name
    theirs = pytest.importorskip("llmratelimiter")
    assert sorted(theirs.__all__) == LLMRATELIMITER_EXPORTS


def _params(f):
    return {n: (p.kind, p.default) for n, p in inspect.signature(f).parameters.items() if n != "self"}


def test_signatures_and_fields_match_llmratelimiter():
    theirs = pytest.importorskip("llmratelimiter")
    pairs = [
        (theirs.RateLimiter.__init__, tollgate.RateLimiter.__init__),
        (theirs.RateLimiter.acquire, tollgate.RateLimiter.acquire),
        (theirs.RateLimiter.adjust, tollgate.RateLimiter.adjust),
        (theirs.RateLimiter.get_status, tollgate.RateLimiter.get_status),
        (theirs.RedisConnectionManager.__init__, tollgate.RedisConnectionManager.__init__),
        (theirs.RateLimitConfig, tollgate.RateLimitConfig),
        (theirs.RetryConfig, tollgate.RetryConfig),
    ]
    for a, b in pairs:
        mine = _params(b)
        for name, (kind, default) in _params(a).items():
            assert name in mine, f"{b.__qualname__} lacks {name}"
            assert mine[name][0] == kind, f"{b.__qualname__}({name}) is {mine[name][0]}, not {kind}"
            # Same default; a required argument may have gained one.
            if kind != inspect.Parameter.VAR_KEYWORD and default is not inspect.Parameter.empty:
                assert mine[name][1] == default, f"{b.__qualname__}({name}) defaults to {mine[name][1]!r}"
    for cls in ("AcquireResult", "RateLimitStatus", "RateLimitConfig", "RetryConfig"):
        theirs_fields = [(f.name, f.default) for f in dataclasses.fields(getattr(theirs, cls))]
        mine_fields = [(f.name, f.default) for f in dataclasses.fields(getattr(tollgate, cls))]
        assert mine_fields == theirs_fields, cls
    for prop in ("is_split_mode", "has_combined_limit", "is_smoothing_enabled", "effective_rps"):
        c = dict(rpm=600, tpm=1000, input_tpm=5)
        assert getattr(tollgate.RateLimitConfig(**c), prop) == getattr(theirs.RateLimitConfig(**c), prop)
    for bad in (dict(max_retries=-1), dict(base_delay=0), dict(max_delay=0.01), dict(jitter=2)):
        for mod in (theirs, tollgate):
            with pytest.raises(ValueError):
                mod.RetryConfig(**bad)


class Usage(SimpleNamespace):
    pass


class _Provider:
    """Stands in for openai / vertex_ai: answers with a usage."""

    def __init__(self):
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.generate))

    async def generate(self, *args, **kwargs):
        return SimpleNamespace(output_tokens=1500, usage=Usage(prompt_tokens=3000, completion_tokens=1500))


README_EXAMPLES = {
    "basic": """
        from llmratelimiter import RateLimiter

        # Just pass a Redis URL and your limits
        limiter = RateLimiter("redis://localhost:6379", "gpt-4", tpm=100_000, rpm=100)

        # Recommended: specify input and output tokens separately
        await limiter.acquire(input_tokens=3000, output_tokens=2000)
        response = await openai.chat.completions.create(...)
    """,
    "split": """
        limiter = RateLimiter(
            "redis://localhost:6379", "gemini-1.5-pro",
            input_tpm=4_000_000, output_tpm=128_000, rpm=360
        )

        # Estimate output tokens upfront
        result = await limiter.acquire(input_tokens=5000, output_tokens=2048)
        response = await vertex_ai.generate(...)

        # Adjust after getting actual output
        await limiter.adjust(result.record_id, actual_output=response.output_tokens)
    """,
    "bedrock": """
        limiter = RateLimiter(
            "redis://localhost:6379", "claude-sonnet",
            tpm=100_000, rpm=100, burndown_rate=5.0
        )

        await limiter.acquire(input_tokens=3000, output_tokens=1000)
        # TPM consumption: 3000 + (5.0 * 1000) = 8000 tokens
    """,
    "azure": """
        # Auto-calculate RPS from RPM (600 RPM = 10 RPS = 100ms minimum gap)
        limiter = RateLimiter(
            "redis://localhost:6379", "gpt-4",
            tpm=300_000, rpm=600, smooth_requests=True
        )

        # Or set explicit RPS for more conservative rate limiting
        limiter = RateLimiter(
            "redis://localhost:6379", "gpt-4",
            tpm=300_000, rpm=600, rps=8  # 125ms minimum gap
        )

        # Custom evaluation interval (Azure may use 1s or 10s intervals)
        limiter = RateLimiter(
            "redis://localhost:6379", "gpt-4",
            tpm=300_000, rpm=600, smooth_requests=True, smoothing_interval=10.0
        )
    """,
    "client": """
        from redis.asyncio import Redis
        from llmratelimiter import RateLimiter

        redis = Redis(host="localhost", port=6379)
        limiter = RateLimiter(redis=redis, model="gpt-4", tpm=100_000, rpm=100)

        await limiter.acquire(input_tokens=3000, output_tokens=2000)
    """,
    "manager": """
        from llmratelimiter import RateLimiter, RedisConnectionManager, RetryConfig

        manager = RedisConnectionManager(
            "redis://localhost:6379",
            retry_config=RetryConfig(max_retries=3, base_delay=0.1),
        )
        limiter = RateLimiter(manager, "gpt-4", tpm=100_000, rpm=100)

        await limiter.acquire(input_tokens=3000, output_tokens=2000)
    """,
}


def _run_example(name, lib, server, prefix):
    code = textwrap.dedent(README_EXAMPLES[name])
    code = code.replace("from llmratelimiter import", f"from {lib.__name__} import")  # the import line
    code = code.replace("localhost:6379", f"127.0.0.1:{server.port}")
    code = code.replace('host="localhost", port=6379', f'host="127.0.0.1", port={server.port}')
    # One key per run, so that both libraries and every test start empty.
    for model in ("gpt-4", "gemini-1.5-pro", "claude-sonnet"):
        code = code.replace(f'"{model}"', f'"{prefix}{model}"')
    provider = _Provider()
    scope = {"RateLimiter": lib.RateLimiter, "openai": provider, "vertex_ai": provider}
    body = "async def __example():\n" + textwrap.indent(code, "    ") + "\n    return locals()\n"
    exec(compile(body, f"<README {name}>", "exec"), scope)
    return asyncio.run(scope["__example"]())


@pytest.mark.parametrize("name", sorted(README_EXAMPLES))
def test_readme_examples_run_unchanged(name, lib, shared_redis, key):
    if name == "client":
        pytest.importorskip("redis")
    found = _run_example(name, lib, shared_redis, f"{key}-{lib.__name__}-")
    limiter = found["limiter"]
    status = asyncio.run(limiter.get_status())
    assert status.requests_limit in (100, 360, 600)
    if name == "bedrock":
        assert status.tokens_limit == 100_000
        if lib is tollgate:  # the combined bucket holds input + 5 × output
            st = asyncio.run(limiter.status())
            # (less what refilled since: 1,667 tokens/s)
            assert 7500 < st.dimensions["tokens"].in_use <= 8000
    if name == "split":
        result = found["result"]
        assert isinstance(result.record_id, str) and result.queue_position == 0 and result.wait_time < 0.01
        assert status.output_tokens_limit == 128_000
        if lib is tollgate:  # the adjusted output is what stays charged
            # (not the 2,048 estimated; less what refilled since: 2,133/s)
            assert 1300 < status.output_tokens_used <= 1500


def test_rate_limit_config_and_get_status_fields(lib, shared_redis, key):
    from redis.asyncio import Redis

    async def main():
        client = Redis(host="127.0.0.1", port=shared_redis.port)
        limiter = lib.RateLimiter(client, f"{key}-{lib.__name__}",
                                  lib.RateLimitConfig(tpm=10_000, rpm=10, window_seconds=60, smooth_requests=False))
        r = await limiter.acquire(tokens=5000)
        assert r.wait_time < 0.01 and r.queue_position == 0 and r.slot_time > 1e9
        s = await limiter.get_status()
        assert isinstance(s, lib.RateLimitStatus)
        assert (s.model, s.window_seconds, s.tokens_limit, s.requests_limit) == (f"{key}-{lib.__name__}", 60, 10_000, 10)
        assert 4500 < s.tokens_used <= 5000 and s.requests_used == 1 and s.queue_depth == 0
        await client.aclose()

    asyncio.run(main())


def test_smoothing_spaces_requests(lib, shared_redis, key):
    async def main():
        limiter = lib.RateLimiter(shared_redis.url, f"{key}-{lib.__name__}", tpm=300_000, rpm=600, rps=8)
        await limiter.acquire(tokens=1)
        r = await limiter.acquire(tokens=1)
        return r.wait_time

    assert 0.09 < asyncio.run(main()) < 0.2  # 125 ms gap
