"""Tasks for the inspection API's tests (tests/test_inspect_api.py):
`hyrex-like run-worker inspect_app:hy`."""

from __future__ import annotations

import time

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


@hy.task(queue="insp")
def ok(n: int) -> int:
    return n


@hy.task(queue="insp")
def other(n: int) -> int:
    return n


@hy.task(queue="insp", max_retries=0)
def boom(n: int) -> None:
    raise ValueError(f"boom {n}")


@hy.task(queue="insp", max_retries=2, retry_backoff=0)
def flaky(n: int) -> str:
    ctx = get_hyrex_context()
    assert ctx is not None
    if ctx.attempt_number == 1:
        raise RuntimeError(f"first attempt of {n} fails")
    return "ok"


@hy.task(queue="insp")
def parent(n: int) -> int:
    for k in range(n):
        ok.send(k)
    return n


@hy.task(queue="held")
def hold(key: str) -> str:
    """Runs until the test sets ``key`` in hy.kv (at most a minute)."""
    deadline = time.monotonic() + 60
    while hy.kv.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return key
