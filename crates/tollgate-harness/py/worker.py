"""Load worker for the Python llmratelimiter, driven by tollgate-harness.

Usage: python worker.py <config.json> <report.json>

Same configuration and report as the Rust worker (crates/tollgate-harness/src/
worker.rs). Calls are limited with output_tpm (variant "split", the default) so
that adjust() can refund an over-estimate: the library's adjust() only changes a
record's output tokens, so the combined `tpm` keeps the estimate (variant
"combined" shows that). Retries and socket timeouts are the library's defaults.
"""

import asyncio
import contextvars
import json
import logging
import random
import sys
import time

from llmratelimiter import RateLimiter

CURRENT = contextvars.ContextVar("current_call", default=None)


class FailOpenDetector(logging.Handler):
    """Marks the current call 'open' when the library logs that it let it through."""

    def emit(self, record):
        call = CURRENT.get()
        if call is not None and "allowing request" in record.getMessage():
            call["outcome"] = "open"


class StandinClient:
    def __init__(self, addr, label):
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.label = host, int(port), label
        self.reader = self.writer = None

    async def call(self, tokens, asked):
        for attempt in range(2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(
                    (
                        "POST /v1/call HTTP/1.1\r\nHost: standin\r\n"
                        f"x-tokens: {tokens}\r\nx-asked: {asked:.6f}\r\n"
                        f"x-client: {self.label}\r\ncontent-length: 0\r\n\r\n"
                    ).encode()
                )
                await self.writer.drain()
                status = int((await self.reader.readline()).split()[1])
                length = 0
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await self.reader.readexactly(length)
                return status
            except Exception:
                if self.writer is not None:
                    self.writer.close()
                self.reader = self.writer = None
                if attempt == 1:
                    raise


async def task(cfg, t, key_index, limiter):
    rng = random.Random(cfg["id"] * 1000 + t)
    client = StandinClient(cfg["standins"][key_index], f"python-w{cfg['id']}-t{t}")
    combined = cfg.get("variant") == "combined"
    calls = []
    while time.time() < cfg["stop_at"]:
        tokens = rng.randint(cfg["min_tokens"], cfg["max_tokens"])
        estimate = round(tokens * cfg["estimate_factor"])
        call = {
            "worker": cfg["id"], "key": key_index, "asked": time.time(), "acquired": 0.0,
            "waited": 0.0, "outcome": "store", "status": 0, "tokens": tokens,
            "settle_secs": 0.0, "error": None,
        }
        CURRENT.set(call)
        try:
            if combined:
                result = await limiter.acquire(tokens=estimate)
            else:
                result = await limiter.acquire(input_tokens=0, output_tokens=estimate)
            call["waited"] = result.wait_time
        except Exception as e:  # the library fails open; anything else is a bug
            call["outcome"] = "other"
            call["error"] = repr(e)
        call["acquired"] = time.time()
        CURRENT.set(None)
        if call["outcome"] != "other":
            try:
                call["status"] = await client.call(tokens, call["asked"])
            except Exception as e:
                call["error"] = f"stand-in: {e!r}"
            if cfg["settle"]:
                used = tokens if call["status"] == 200 else 0
                start = time.perf_counter()
                await limiter.adjust(result.record_id, actual_output=used)
                call["settle_secs"] = max(time.perf_counter() - start, 1e-9)
        calls.append(call)
        if call["status"] != 200 and cfg["error_pause_ms"]:
            await asyncio.sleep(cfg["error_pause_ms"] / 1000)
        elif cfg["think_ms"]:
            await asyncio.sleep(cfg["think_ms"] / 1000)
    return calls


async def main(cfg_path, out_path):
    with open(cfg_path) as f:
        cfg = json.load(f)
    logging.getLogger("llmratelimiter").addHandler(FailOpenDetector())
    logging.getLogger("llmratelimiter").propagate = False
    window = max(1, int(round(cfg["window_secs"])))
    limiters = []
    for i, key in enumerate(cfg["keys"]):
        if cfg.get("variant") == "combined":
            limits = dict(tpm=cfg["tokens"])
        else:
            limits = dict(output_tpm=cfg["tokens"])
        limiters.append(
            RateLimiter(
                cfg["url"], key, rpm=cfg["requests"], window_seconds=window,
                smooth_requests=False, max_connections=max(10, cfg["tasks"]), **limits,
            )
        )
    delay = cfg["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    results = await asyncio.gather(
        *(task(cfg, t, t % len(limiters), limiters[t % len(limiters)]) for t in range(cfg["tasks"]))
    )
    with open(out_path, "w") as f:
        json.dump({"calls": [c for r in results for c in r], "outages_logged": 0}, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
