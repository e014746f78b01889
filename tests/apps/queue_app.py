"""Tasks for the queue controls' tests (tests/test_queues.py, tests/test_queue_limits.py):
`hyrex-like run-worker queue_app:hy`."""

from __future__ import annotations

import time

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


class Job(BaseModel):
    n: int
    seconds: float = 0.0


@hy.task(queue="payments")
def pay(job: Job) -> dict[str, float | str]:
    """A task of the limited queue: says when its body ran (epoch seconds) and where."""
    began = time.time()
    time.sleep(job.seconds)
    return {"began": began, "ended": time.time(), "queue": get_hyrex_context().queue}


@hy.task(queue="other")
def other(job: Job) -> dict[str, float | str]:
    """A task of another queue, with the same report."""
    began = time.time()
    time.sleep(job.seconds)
    return {"began": began, "ended": time.time(), "queue": get_hyrex_context().queue}
