"""Speed of the Python llmratelimiter (and of tollgate for Python, which
takes the same calls: "lib": "tollgate"), driven by tollgate-harness speed.

Usage: python speed.py '<json>'   (prints one JSON object)

{"mode": "throughput", "url", "key", "concurrency", "secs", "window"}
    acquire(tokens=1) in `concurrency` asyncio tasks for `secs`, limits so high
    that nobody waits; reports the count and latency quantiles (ms).
{"mode": "fill", "url", "key", "fill", "samples", "max_secs", "window"}
    puts `fill` records in the key's window (as acquire() writes them), then
    times `samples` sequential acquires (stopping after `max_secs`); tollgate
    gets its `fill` reservations from acquire() itself.
"""

import asyncio
import importlib
import json
import random
import sys
import time



def quantiles(lat):
    lat = sorted(lat)
    q = lambda p: lat[min(len(lat) - 1, round((len(lat) - 1) * p))] * 1000 if lat else 0.0
    return {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "n": len(lat)}


def limiter(cfg, connections):
    RateLimiter = importlib.import_module(cfg.get("lib", "llmratelimiter")).RateLimiter
    return RateLimiter(
        cfg["url"], cfg["key"], tpm=10**12, rpm=10**9, window_seconds=cfg["window"],
        smooth_requests=False, max_connections=max(10, connections),
    )


async def throughput(cfg):
    lim = limiter(cfg, cfg["concurrency"])
    await lim.acquire(tokens=1)  # connect and warm up
    stop = time.perf_counter() + cfg["secs"]
    lat = []

    async def task():
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await lim.acquire(tokens=1)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    cpu, process_cpu, redis_cpu = time.thread_time(), time.process_time(), await redis_seconds(lim)
    await asyncio.gather(*(task() for _ in range(cfg["concurrency"])))
    elapsed = time.perf_counter() - start
    # Cores kept busy: the event loop's own thread, the whole process (with
    # tollgate's runtime threads) and redis-server (1.0 = a whole core).
    busy = {
        "loop_cpu": (time.thread_time() - cpu) / elapsed,
        "process_cpu": (time.process_time() - process_cpu) / elapsed,
        "redis_cpu": (await redis_seconds(lim) - redis_cpu) / elapsed,
    }
    return {"count": len(lat), "secs": elapsed, **busy, **quantiles(lat)}


async def redis_seconds(lim):
    """CPU seconds redis-server has used (user + system)."""
    info = await lim.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fill(cfg):
    lim = limiter(cfg, 1)
    if cfg.get("lib") == "tollgate":
        per_task = -(-cfg["fill"] // 64)

        async def fill_some(count):
            for _ in range(count):
                await lim.acquire(tokens=1)

        await asyncio.gather(*(fill_some(max(0, min(per_task, cfg["fill"] - t * per_task))) for t in range(64)))
    now = time.time()
    key = lim.consumption_key
    for start in range(0, cfg["fill"] if cfg.get("lib") != "tollgate" else 0, 5000):
        pipe = lim.redis.pipeline(transaction=False)
        for i in range(start, min(cfg["fill"], start + 5000)):
            member = json.dumps({
                "input_tokens": 1, "output_tokens": 0, "effective_combined_tokens": 1,
                "record_id": f"fill-{i}", "created_at": now,
            })
            pipe.zadd(key, {member: now - random.random() * cfg["window"] / 2})
        await pipe.execute()
    lat = []
    stop = time.perf_counter() + cfg["max_secs"]
    while len(lat) < cfg["samples"] and time.perf_counter() < stop:
        t = time.perf_counter()
        await lim.acquire(tokens=1)
        lat.append(time.perf_counter() - t)
    return quantiles(lat)


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    run = throughput if cfg["mode"] == "throughput" else fill
    print(json.dumps(asyncio.run(run(cfg))))
