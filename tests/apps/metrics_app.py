"""Tasks for the metrics tests (tests/test_metrics.py): `hyrex-like run-worker metrics_app:hy`
with --metrics-port."""

from __future__ import annotations

import os

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
