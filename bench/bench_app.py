"""The app the benchmark worker runs: ``hyrex-like run-worker bench_app:hy``.

Task bodies are no-ops (or nearly), so the harness measures the queue, not the work. The
database comes from ``HYREX_LIKE_DATABASE_URL`` (the harness sets it), like any app.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


class Item(BaseModel):
    i: int


class Stamp(BaseModel):
    seq: int
    t_enqueue: float
    path: str


@hy.task
def noop(item: Item) -> None:
    """The drain workloads: does nothing."""
    return None


@hy.task(max_retries=1, retry_backoff=0)
def flaky(item: Item) -> None:
    """Every tenth task fails on its first attempt and succeeds on the retry."""
    ctx = get_hyrex_context()
    if item.i % 10 == 0 and ctx is not None and ctx.attempt_number == 1:
        raise RuntimeError(f"planned failure of task {item.i}")
    return None


@hy.task
def stamp(s: Stamp) -> None:
    """The latency workload: first thing, append ``seq t_enqueue t_start`` to a file."""
    now = time.time()
    with open(s.path, "a") as f:
        f.write(f"{s.seq} {s.t_enqueue!r} {now!r}\n")
