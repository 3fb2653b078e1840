"""rediss:// against a TLS-only redis-server with certificates made by the
test: the CA given as redis-py takes it (keyword, URL parameter, client)."""

from __future__ import annotations

import asyncio

import pytest

import tollgate
from tollgate import RateLimiter, RedisConnectionManager, RetryConfig


def _use(lim):
    async def main():
        p = await lim.acquire(tokens=10)
        assert p.source == "store"
        return (await lim.status()).dimensions["tokens"].in_use

    assert asyncio.run(main()) == pytest.approx(10, abs=1)


def test_rediss_with_the_ca_as_a_keyword(tls_redis, certs, key):
    _use(RateLimiter(tls_redis.url, key, tpm=1000, window_seconds=3600, ssl_ca_certs=str(certs.ca), smooth_requests=False))


def test_rediss_with_the_ca_in_the_url(tls_redis, certs, key):
    _use(RateLimiter(f"{tls_redis.url}?ssl_ca_certs={certs.ca}", key, tpm=1000, window_seconds=3600, smooth_requests=False))


def test_rediss_through_a_connection_manager_and_a_redis_py_client(tls_redis, certs, key):
    manager = RedisConnectionManager(tls_redis.url, ssl_ca_certs=str(certs.ca), retry_config=RetryConfig(max_retries=1))
    _use(RateLimiter(manager, key, tpm=1000, window_seconds=3600, smooth_requests=False))
    redis_asyncio = pytest.importorskip("redis.asyncio")

    async def make_client():  # older redis-py wants a running loop for it
        return redis_asyncio.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=str(certs.ca))

    client = asyncio.run(make_client())
    _use(RateLimiter(client, key + "-c", tpm=1000, window_seconds=3600, smooth_requests=False))


def test_a_server_certificate_from_another_ca_is_refused(tls_redis, certs, key):
    async def main():
        lim = RateLimiter(tls_redis.url, key, tpm=1000, window_seconds=3600, ssl_ca_certs=str(certs.other_ca), outage="closed",
                          retry_config=RetryConfig(max_retries=0), smooth_requests=False)
        await lim.acquire(tokens=10)

    with pytest.raises((tollgate.StoreUnavailable, tollgate.StoreError)):
        asyncio.run(main())
