"""Tasks for the bad-input tests: `hyrex-like run-worker bad_input_app:hy`."""

from __future__ import annotations

from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


class Item(BaseModel):
    n: int


@hy.task(max_retries=3, retry_backoff=0)
def strict(item: Item) -> int:
    """Its stored args may be rewritten by a test to something that no longer validates."""
    return item.n


@hy.task(max_retries=3, retry_backoff=0)
def unjsonable(item: Item):  # type: ignore[no-untyped-def]  # no return annotation on purpose
    """Returns a value that cannot be dumped to JSON."""
    return object()


@hy.task(max_retries=3, retry_backoff=0)
def nul_result(item: Item) -> str:
    """Returns a string PostgreSQL JSON cannot store."""
    return "before\x00after"


@hy.task
def ok(item: Item) -> int:
    return item.n
