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


async def until_file(name: str, limit: float = 30.0) -> None:
    """Wait (polling, at most ``limit`` seconds) until the test creates $HYREX_TEST_OUT/name."""
    path = os.path.join(os.environ["HYREX_TEST_OUT"], name)
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


@hy.task
async def reports(n: int) -> int:
    ctx = get_hyrex_context()
    ctx.update_progress({"n": n, "step": 1})
    await until_file("go")  # the test saw every first value written
    ctx.update_progress({"n": n, "step": 2})
    return n


@hy.task
async def gated(n: int) -> int:
    note("gated", n=n)
    await until_file("release")
    return n


@hy.task(max_retries=2)
async def lost_once(n: int) -> int:
    attempt = get_hyrex_context().attempt_number
    note("lost_once", n=n, attempt=attempt)
    if attempt == 1:
        await asyncio.sleep(30)  # its executor is killed meanwhile
    return n


@hy.task(timeout_seconds=0.5)
async def swallows_cancel(n: int) -> str:
    note("swallows_cancel", n=n)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "caught"
    return "never"


async def slow_on_error(exc: BaseException) -> None:
    await asyncio.sleep(1.0)  # still running when the test stops the worker
    note("on_error", type=type(exc).__name__)
    raise RuntimeError("on_error broke after its first await")


@hy.task(max_retries=0, on_error=slow_on_error)
async def fails(n: int) -> int:
    raise ValueError("boom")
