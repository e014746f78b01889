"""The app of the send-lifecycle tests (tests/test_send_lifecycle.py,
tests/test_retry_by_hand.py): `hyrex-like run-worker send_lifecycle_app:hy`.

Outcomes are read back from the database (status, runs), so the tasks write nothing else.
"""

from __future__ import annotations

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


class Item(BaseModel):
    n: int


def _attempt() -> int:
    ctx = get_hyrex_context()
    assert ctx is not None
    return ctx.attempt_number


@hy.task
def record(item: Item) -> int:
    return item.n


@hy.task(max_retries=1, retry_backoff=30)
def fails_first(item: Item) -> str:
    """Fails its first attempt, then waits 30 s for its retry."""
    if _attempt() == 1:
        raise RuntimeError(f"first attempt of {item.n} fails")
    return "ok"


@hy.task(max_retries=1, retry_backoff=0)
def fails_before(item: Item) -> int:
    """Fails every attempt numbered below ``item.n``."""
    attempt = _attempt()
    if attempt < item.n:
        raise ValueError(f"attempt {attempt} fails")
    return attempt
