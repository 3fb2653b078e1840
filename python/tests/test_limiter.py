"""tollgate for Python against real redis-server processes: FIFO, split
limits, burndown, settlement, cancellation, oversize requests, priority
classes, the context manager and the sync API."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

import tollgate
from tollgate import RateLimited, RateLimiter, SyncRateLimiter, TooLarge


async def wait_for(pred, timeout=5.0, every=0.02):
    """Polls an async predicate until it holds; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = await pred()
        if v or time.monotonic() > deadline:
            return v
        await asyncio.sleep(every)


def test_waiters_are_granted_in_arrival_order(shared_redis, key):
    async def main():
        # One request per 0.5 s: all five stay queued while they arrive.
        lim = RateLimiter(shared_redis.url, key, rpm=4, window_seconds=2, smooth_requests=False)
        for _ in range(4):  # drain the bucket
            await lim.acquire(tokens=0)
        granted = []

        async def one(i):
            p = await lim.acquire(tokens=0)
            granted.append((i, p.queue_position, p.slot_time))

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(one(i)))
            # the next one arrives only once this one is queued in Redis
            assert await wait_for(lambda: _depth_is(lim, i + 1)), f"request {i} never queued"
        await asyncio.gather(*tasks)
        assert [g[0] for g in granted] == list(range(5))
        assert [g[1] for g in granted] == list(range(5))
        slots = [g[2] for g in granted]
        assert all(b - a == pytest.approx(0.5, abs=0.01) for a, b in zip(slots, slots[1:])), slots

    asyncio.run(main())


async def _depth_is(lim, n):
    return (await lim.status()).queue_depth == n


def test_split_limits_refuse_what_one_side_cannot_take(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, input_tpm=1000, output_tpm=100, window_seconds=3600,
                          smooth_requests=False)
        await lim.acquire(input_tokens=10, output_tokens=100)
        with pytest.raises(RateLimited) as e:
            await lim.acquire(input_tokens=10, output_tokens=1, max_wait=0)
        assert 35.9 < e.value.retry_after < 36.1  # one output token of 100/hour
        # The input side still has room: a request with no output starts at once.
        p = await lim.try_acquire(input_tokens=900, output_tokens=0)
        assert p.wait_time == 0
        st = await lim.status()
        assert st.dimensions["input_tokens"].in_use == pytest.approx(910, abs=1)
        assert st.dimensions["output_tokens"].in_use == pytest.approx(100, abs=1)
        # llmratelimiter's tokens= counts as input, so it fits split limits too.
        await lim.try_acquire(tokens=50)
        assert (await lim.get_status()).input_tokens_used == pytest.approx(960, abs=2)

    asyncio.run(main())


def test_burndown_weighs_output_tokens(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, tpm=1000, burndown_rate=5.0, window_seconds=3600, smooth_requests=False)
        await lim.acquire(input_tokens=100, output_tokens=100)
        assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(600, abs=1)
        # tokens= is taken as already weighed (as llmratelimiter does).
        await lim.acquire(tokens=100)
        assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(700, abs=1)
        with pytest.raises(RateLimited):
            await lim.acquire(input_tokens=0, output_tokens=61, max_wait=0)  # 305 > 300 left

    asyncio.run(main())


def test_settling_below_the_estimate_refunds_it(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, tpm=1000, window_seconds=3600, smooth_requests=False)
        p = await lim.acquire(input_tokens=100, output_tokens=700)
        with pytest.raises(RateLimited):
            await lim.acquire(tokens=700, max_wait=0)
        done = await lim.settle(p, output_tokens=100)
        assert done.refunded["tokens"] == pytest.approx(600, abs=1)
        await lim.acquire(tokens=700, max_wait=0)  # fits now
        # The same permit again is refused: settled at most once.
        with pytest.raises(tollgate.TokenError):
            await lim.settle(p, output_tokens=1)

        # llmratelimiter's adjust through record_id, from another limiter
        # object (as another process would): refunds once.
        q = await lim.acquire(input_tokens=0, output_tokens=100, max_wait=0)  # fills the bucket
        other = RateLimiter(shared_redis.url, key, tpm=1000, window_seconds=3600, smooth_requests=False)
        before = (await lim.status()).dimensions["tokens"].in_use
        await other.adjust(q.record_id, actual_output=25)
        after = (await lim.status()).dimensions["tokens"].in_use
        assert before - after == pytest.approx(75, abs=1)
        await other.adjust(q.record_id, actual_output=0)  # a second adjust changes nothing
        assert (await lim.status()).dimensions["tokens"].in_use <= after

    asyncio.run(main())


def test_cancelling_the_awaiting_task_releases_its_reservation(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, rpm=2, window_seconds=3600, smooth_requests=False)
        await lim.acquire(tokens=0)
        await lim.acquire(tokens=0)
        queue_key = lim._native.redis_keys()[1]
        waiter = asyncio.create_task(lim.acquire(tokens=0))
        assert await wait_for(lambda: _depth_is(lim, 1))
        assert shared_redis.command("ZCARD", queue_key) == b":1\r\n"
        assert (await lim.status()).dimensions["requests"].in_use == pytest.approx(3, abs=0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await wait_for(lambda: _depth_is(lim, 0)), "the cancelled reservation stayed queued"
        assert shared_redis.command("ZCARD", queue_key) == b":0\r\n"
        # Its charge is back: the bucket holds the two granted ones only.
        assert (await lim.status()).dimensions["requests"].in_use == pytest.approx(2, abs=0.01)
        assert lim.stats()["cancelled"] == 1

    asyncio.run(main())


def test_wait_for_timeout_releases_too(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, rpm=1, window_seconds=3600, smooth_requests=False)
        await lim.acquire(tokens=0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lim.acquire(tokens=0), 0.3)
        assert await wait_for(lambda: _depth_is(lim, 0))
        assert (await lim.status()).dimensions["requests"].in_use == pytest.approx(1, abs=0.01)

    asyncio.run(main())


def test_a_request_that_can_never_fit_is_refused_at_once(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, tpm=1000, rpm=10, smooth_requests=False)
        t = time.monotonic()
        with pytest.raises(TooLarge) as e:
            await lim.acquire(tokens=1001)
        assert time.monotonic() - t < 1
        assert "raise burst" in str(e.value)
        assert isinstance(e.value, ValueError)
        st = await lim.status()
        assert st.dimensions["tokens"].in_use == 0 and st.queue_depth == 0
        # burst makes room for it
        big = RateLimiter(shared_redis.url, key + "-b", tpm=1000, burst=2.0, smooth_requests=False)
        await big.acquire(tokens=1500)

    asyncio.run(main())


def test_max_wait_refuses_with_retry_after(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, rpm=60, window_seconds=3600, max_wait=0.5, smooth_requests=False)
        for _ in range(60):
            await lim.acquire(tokens=0)
        await lim.acquire(tokens=0)  # a minute away: beyond 0.5 s
    with pytest.raises(RateLimited) as e:
        asyncio.run(main())
    assert 59 < e.value.retry_after <= 60.01
    assert e.value.max_wait == pytest.approx(0.5)


def test_priority_classes_keep_headroom_for_the_top_class(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, rpm=10, window=3600, classes=[1.0, 0.5], smooth_requests=False)
        for _ in range(5):
            await lim.acquire(tokens=0, priority=1)
        with pytest.raises(RateLimited):
            await lim.acquire(tokens=0, priority=1, max_wait=0)
        p = await lim.acquire(tokens=0, priority=0, max_wait=0)
        assert p.priority == 0 and p.wait_time == 0

    asyncio.run(main())


def test_limit_settles_from_the_response_usage(shared_redis, key):
    async def main():
        lim = RateLimiter(shared_redis.url, key, tpm=10_000, window_seconds=3600, smooth_requests=False)
        async with lim.limit(input_tokens=1000, output_tokens=2000) as permit:
            assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(3000, abs=2)
            response = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=1000, completion_tokens=150))
            permit.record(response)
        assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(1150, abs=2)
        # A block that fails before any usage gives the estimate back.
        with pytest.raises(RuntimeError):
            async with lim.limit(tokens=5000):
                raise RuntimeError("the provider call failed")
        assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(1150, abs=3)
        # Anthropic-style dict usage
        async with lim.limit(input_tokens=10, output_tokens=10) as permit:
            permit.record({"usage": {"input_tokens": 10, "output_tokens": 5}})
        assert (await lim.status()).dimensions["tokens"].in_use == pytest.approx(1165, abs=3)

    asyncio.run(main())


def test_the_sync_api_blocks_in_order(shared_redis, key):
    lim = SyncRateLimiter(shared_redis.url, key, rpm=5, window_seconds=1, tpm=1000, smooth_requests=False)
    for _ in range(5):
        lim.acquire(tokens=1)
    t = time.monotonic()
    p = lim.acquire(tokens=100)
    assert 0.15 < time.monotonic() - t < 3 and p.wait_time > 0.15
    lim.settle(p, tokens=20)
    with lim.limit(input_tokens=10, output_tokens=10) as q:
        q.record({"prompt_tokens": 10, "completion_tokens": 0})
    st = lim.status()
    assert st.dimensions["tokens"].in_use < 50
    assert lim.get_status().requests_limit == 5
    with pytest.raises(TooLarge):
        lim.acquire(tokens=5000)


def test_bad_settings_are_refused_with_their_name(shared_redis, key):
    with pytest.raises(ValueError, match="model"):
        RateLimiter(shared_redis.url)
    with pytest.raises(tollgate.ConfigError, match="outage"):
        RateLimiter(shared_redis.url, key, rpm=1, outage="sometimes")
    with pytest.raises(tollgate.ConfigError, match="share"):
        RateLimiter(shared_redis.url, key, rpm=1, outage="local", local_share=2.0)
    with pytest.raises(tollgate.ConfigError, match="store URL"):
        RateLimiter("http://127.0.0.1:1", key, rpm=1)
    with pytest.raises(tollgate.ConfigError):
        RateLimiter(shared_redis.url, key)  # no limits at all
    lim = RateLimiter(shared_redis.url, key, rpm=10, smooth_requests=False)
    with pytest.raises(tollgate.LimitsConflict):
        RateLimiter(shared_redis.url, key, rpm=20, smooth_requests=False)
    async def bad_calls():
        with pytest.raises((OverflowError, ValueError)):
            await lim.acquire(tokens=-1)
        with pytest.raises(tollgate.ConfigError, match="class"):
            await lim.acquire(tokens=1, priority=3)  # one class only
        with pytest.raises(tollgate.ConfigError, match="max_wait"):
            await lim.acquire(tokens=1, max_wait=-1.0)
        with pytest.raises(ValueError, match="both"):
            await lim.acquire(tokens=1, input_tokens=1)
        assert (await lim.status()).queue_depth == 0

    asyncio.run(bad_calls())
    del lim
    with pytest.raises(tollgate.TokenError):
        asyncio.run(RateLimiter(shared_redis.url, key, rpm=10, smooth_requests=False).settle("nonsense", tokens=1))


def test_a_permit_that_arrives_for_a_cancelled_future_is_given_back(shared_redis, key):
    from tollgate import _native
    from tollgate._limiter import _bridge

    async def main():
        lim = RateLimiter(shared_redis.url, key, rpm=10, window_seconds=3600, smooth_requests=False)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # The call goes on (its task is not stopped); its future is cancelled
        # before the permit can arrive, as when the awaiting task is cancelled
        # just as Redis answers.
        lim._native.acquire(_bridge(loop), fut, None, 0, 0, 0, None)
        fut.cancel()

        async def given_back():
            st = await lim.status()
            return lim.stats()["granted"] == 1 and st.dimensions["requests"].in_use < 0.01

        assert await wait_for(given_back), (lim.stats(), await lim.status())
        assert isinstance(await lim.acquire(tokens=0), tollgate.Permit)
        assert _native.TOKEN_LIFETIME == 3600

    asyncio.run(main())
