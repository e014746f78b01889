"""The app bench/schedules.py runs: ``hyrex-like run-worker sched_app:hy``.

``tick`` is scheduled every second; first thing, its body appends ``scheduled_for start
task_id`` (epoch seconds) to ``$SCHED_BENCH_STAMPS``, so lateness is measured where the task
begins. ``noop`` is the drain's task, as in bench_app.py.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, every, get_hyrex_context

hy = HyrexRegistry()


class Item(BaseModel):
    i: int


@hy.task
def noop(item: Item) -> None:
    """The drain workload: does nothing."""
    return None


@hy.task(schedule=every(timedelta(seconds=1)))
def tick() -> None:
    now = time.time()
    path = os.environ.get("SCHED_BENCH_STAMPS")
    if not path:
        return
    ctx = get_hyrex_context()
    assert ctx.scheduled_for is not None, "a scheduled task without its tick time"
    line = f"{ctx.scheduled_for.timestamp()!r} {now!r} {ctx.task_id}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
