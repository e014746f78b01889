"""Tasks returning what JSON cannot hold as it is (`run-worker hostile_results_app:hy`)."""

from __future__ import annotations

from typing import Any

from hyrex_like import MAX_NESTING_DEPTH, HyrexRegistry

hy = HyrexRegistry()


def nested(depth: int) -> dict[str, Any]:
    """A dict nested ``depth`` levels deep ({} is one level)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@hy.task(max_retries=2, retry_backoff=0)
def typed_nan(n: int) -> dict[str, float]:
    """Typed: pydantic alone would store {"value": null}."""
    return {"value": float("nan")}


@hy.task(max_retries=2, retry_backoff=0)
def untyped_inf(n: int):  # type: ignore[no-untyped-def]  # no return annotation on purpose
    return {"value": float("inf")}


@hy.task(max_retries=2, retry_backoff=0)
def surrogate_key(n: int) -> dict[str, int]:
    return {"k\udc80": n}


@hy.task(max_retries=2, retry_backoff=0)
def too_deep(n: int) -> dict[str, Any]:
    return nested(MAX_NESTING_DEPTH + 1)


@hy.task
def deepest(n: int) -> dict[str, Any]:
    return nested(MAX_NESTING_DEPTH)
