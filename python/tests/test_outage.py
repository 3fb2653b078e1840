"""Each outage policy with Redis killed (and paused): calls are decided in
bounded time, by the policy, and Redis decides again once it is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from tollgate import RateLimited, RateLimiter, RetryConfig, StoreUnavailable

FAST = dict(retry_config=RetryConfig(max_retries=1, base_delay=0.01, max_delay=0.05), response_timeout=0.2,
            connect_timeout=0.2, smooth_requests=False)


async def working_limiter(redis, key, outage):
    """A limiter on `redis` that has had one call decided by it."""
    lim = RateLimiter(redis.url, key, rpm=100, outage=outage, **FAST)
    assert (await lim.acquire(tokens=0)).source == "store"
    return lim


async def store_decides_again(lim):
    """Acquires until Redis decides again (within 5 s of its restart)."""
    deadline = time.monotonic() + 5
    while (await lim.acquire(tokens=0)).source != "store":
        assert time.monotonic() < deadline, "Redis never decided again"
        await asyncio.sleep(0.05)


def test_open_lets_calls_through_and_redis_decides_again_after_a_restart(redis_server, key):
    redis = redis_server()

    async def main():
        lim = await working_limiter(redis, key, "open")
        redis.kill()
        t = time.monotonic()
        p = await lim.acquire(tokens=0)
        assert time.monotonic() - t < 2
        assert p.source == "open" and not p.store_reachable and p.wait_time == 0
        # llmratelimiter's fields are there for a permit let through, too.
        assert isinstance(p.record_id, str) and p.queue_position == 0
        await lim.adjust(p.record_id, actual_output=5)  # nothing to settle: no error
        with pytest.raises(StoreUnavailable) as e:
            await lim.status()  # no policy covers status
        assert e.value.policy is None
        assert (await lim.get_status()).requests_used == 0  # zeros, as llmratelimiter
        redis.start()
        await store_decides_again(lim)
        assert lim.stats()["outage_open"] >= 1

    asyncio.run(main())


def test_closed_refuses_with_store_unavailable(redis_server, key):
    redis = redis_server()

    async def main():
        lim = await working_limiter(redis, key, "closed")
        redis.kill()
        t = time.monotonic()
        with pytest.raises(StoreUnavailable) as e:
            await lim.acquire(tokens=0)
        assert time.monotonic() - t < 2
        assert e.value.policy == "closed"
        assert "outage policy: closed" in str(e.value)

    asyncio.run(main())


def test_local_keeps_limiting_in_process_with_its_share(redis_server, key):
    redis = redis_server()

    async def main():
        lim = RateLimiter(redis.url, key, rpm=4, outage="local", local_share=0.5, **FAST)
        redis.kill()
        a = await lim.acquire(tokens=0)
        b = await lim.acquire(tokens=0)
        assert a.source == b.source == "local"
        with pytest.raises(RateLimited):
            await lim.acquire(tokens=0, max_wait=0)  # 2 of 4 is this process's share
        await lim.cancel(b)  # settled in process
        assert (await lim.acquire(tokens=0, max_wait=0)).source == "local"

    asyncio.run(main())


def test_a_paused_redis_does_not_hang_acquire(redis_server, key):
    redis = redis_server()

    async def main():
        lim = await working_limiter(redis, key, "closed")
        redis.pause()
        try:
            t = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await lim.acquire(tokens=0)
            assert time.monotonic() - t < 3
        finally:
            redis.resume()

    asyncio.run(main())


def test_a_limiter_made_while_redis_is_down_applies_its_policy_until_it_is_up(redis_server, key):
    redis = redis_server()
    redis.kill()

    async def main():
        lim = RateLimiter(redis.url, key, rpm=100, outage="open", **FAST)
        assert (await lim.acquire(tokens=0)).source == "open"
        redis.start()
        await store_decides_again(lim)

    asyncio.run(main())
