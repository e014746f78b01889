"""Tasks for the metrics tests (tests/test_metrics.py): `hyrex-like run-worker metrics_app:hy`
with --metrics-port."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


class Item(BaseModel):
    n: int


@hy.task(queue="metered")
def fine(item: Item) -> int:
    return item.n


@hy.task(queue="metered", max_retries=0)
def broken(item: Item) -> None:
    raise RuntimeError(f"broken {item.n}")


@hy.task(queue="metered", max_retries=0)
def crash(item: Item) -> None:
    """Kills its executor: the attempt is lost and the executor replaced."""
    os._exit(3)


@hy.task(queue="later")
def later(item: Item) -> int:
    return item.n


class Gate(BaseModel):
    path: str  # the test creates this file to let the task end
    fail: bool = False


@hy.task(queue="metered", max_retries=0)
def gated(gate: Gate) -> str:
    """Runs until the test creates ``gate.path`` (at most 120 s), then returns or raises."""
    deadline = time.monotonic() + 120
    while not Path(gate.path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate.path} never appeared")
        time.sleep(0.01)
    if gate.fail:
        raise RuntimeError("gated failure")
    return gate.path
