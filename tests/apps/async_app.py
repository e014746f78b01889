"""The app of tests/test_async_concurrency.py: async tasks run side by side in one executor
(``run-worker --async-concurrency K``). Bodies note what they do as in worker_app."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


def note(kind: str, **data: Any) -> None:
    """Append one event line to $HYREX_TEST_OUT/events.jsonl (as worker_app does)."""
    out = os.environ.get("HYREX_TEST_OUT")
    if not out:
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@hy.task
async def nap(n: int) -> dict[str, float]:
    began = time.time()
    await asyncio.sleep(0.1)
    return {"began": began, "ended": time.time()}


@hy.task
async def whoami(n: int) -> dict[str, object]:
    """Reads its context before and after awaiting: each task must keep its own."""
    before = get_hyrex_context()
    await asyncio.sleep(0.05 + (n % 7) * 0.01)
    after = get_hyrex_context()
    return {"n": n, "before": str(before.task_id), "after": str(after.task_id)}


@hy.task(timeout_seconds=0.5)
async def sleeps_long(n: int) -> str:
    note("sleeps_long", n=n)
    await asyncio.sleep(30)
    return "never"


@hy.task(timeout_seconds=0.5)
async def blocks(n: int) -> str:
    note("blocks", n=n)
    time.sleep(30)  # never yields: only killing the executor stops it
    return "never"


@hy.task
async def slow_sibling(n: int) -> int:
    note("slow_sibling", n=n)
    await asyncio.sleep(1.5)
    return os.getpid()


@hy.task
async def waits(n: int) -> int:
    note("waits", n=n)
    await asyncio.sleep(60)
    return n


@hy.task(async_concurrency=3)
async def capped(n: int) -> dict[str, float]:
    began = time.time()
    await asyncio.sleep(0.2)
    return {"began": began, "ended": time.time()}


@hy.task
def sync_step(n: int) -> dict[str, float]:
    began = time.time()
    time.sleep(0.05)
    return {"began": began, "ended": time.time()}


@hy.task
async def reports(n: int) -> int:
    ctx = get_hyrex_context()
    ctx.update_progress({"n": n, "step": 1})
    await asyncio.sleep(0.8)  # long enough for the sampler to send the first value
    ctx.update_progress({"n": n, "step": 2})
    await asyncio.sleep(0.05)
    return n
