"""A Rust process (python/examples/fifo_peer.rs, on the Rust library) and
this Python process on one key wait in one FIFO queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from tollgate import RateLimiter

HERE = Path(__file__).resolve().parent.parent


def peer_binary() -> str:
    """The peer scripts/test built (TOLLGATE_FIFO_PEER), else built now."""
    path = os.environ.get("TOLLGATE_FIFO_PEER")
    if path:
        return path
    out = subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--manifest-path", str(HERE / "Cargo.toml"),
         "--example", "fifo_peer", "--message-format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    import json

    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "fifo_peer":
            return msg["executable"]
    raise RuntimeError("cargo built no fifo_peer")


def test_rust_and_python_callers_share_one_fifo_queue(shared_redis, key):
    peer = subprocess.Popen(
        [peer_binary(), shared_redis.url, key, "4", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        assert peer.stdout.readline().strip() == "ready"

        async def main():
            # One request per 0.5 s: all six stay queued while they arrive.
            lim = RateLimiter(shared_redis.url, key, rpm=4, window_seconds=2, smooth_requests=False)
            for _ in range(4):  # drain the bucket: from here on everyone queues
                await lim.acquire(tokens=0)
            python_grants = {}

            async def py_call(label):
                p = await lim.acquire(tokens=0)
                python_grants[label] = (p.slot_time, p.queue_position)

            order = []
            tasks = []
            for i in range(6):
                label = f"{'py' if i % 2 == 0 else 'rs'}{i}"
                order.append(label)
                if label.startswith("py"):
                    tasks.append(asyncio.create_task(py_call(label)))
                else:
                    peer.stdin.write(f"acquire {label}\n")
                    peer.stdin.flush()
                # The next caller (of the other process) arrives once this one is queued.
                deadline = time.monotonic() + 5
                while (await lim.status()).queue_depth < i + 1:
                    assert time.monotonic() < deadline, f"{label} never queued"
                    await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            return order, python_grants

        order, python_grants = asyncio.run(main())
        peer.stdin.write("quit\n")
        peer.stdin.flush()
        rust_grants = {}
        for line in peer.stdout:
            label, slot, position = line.split()
            assert label != "error", line
            rust_grants[label] = (float(slot), int(position))
        assert peer.wait(timeout=10) == 0
        grants = {**python_grants, **rust_grants}
        assert sorted(grants) == sorted(order)
        slots = [grants[label][0] for label in order]
        positions = [grants[label][1] for label in order]
        # One queue: each caller was queued behind all the earlier ones,
        # whichever process they came from, and starts 0.5 s after the last.
        assert positions == list(range(6)), (order, grants)
        assert all(b - a == pytest.approx(0.5, abs=0.01) for a, b in zip(slots, slots[1:])), (order, grants)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
