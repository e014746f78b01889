"""A small app used by worker tests: `hyrex-like run-worker basic_app:hy`."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


class Item(BaseModel):
    n: int


@hy.task
def echo(item: Item) -> dict[str, int]:
    ctx = get_hyrex_context()
    assert ctx is not None
    return {"n": item.n, "attempt": ctx.attempt_number}


@hy.task
async def async_double(item: Item) -> int:
    await asyncio.sleep(0)
    return item.n * 2


@hy.task(max_retries=2, retry_backoff=0)
def fail_once(item: Item) -> str:
    ctx = get_hyrex_context()
    assert ctx is not None
    if ctx.attempt_number == 1:
        raise RuntimeError(f"first attempt of {item.n} fails")
    return "ok"


@hy.task(timeout_seconds=1, max_retries=1, retry_backoff=0)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@hy.task(max_retries=1, retry_backoff=0)
def die(code: int) -> None:
    os._exit(code)
