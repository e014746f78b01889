"""The app of the task-lifecycle worker tests (tests/test_cancel_running.py,
tests/test_delayed_wake.py): bodies note what they do in ``$HYREX_TEST_OUT/events.jsonl`` (one
JSON line per event, with the pid), so a test sees what ran and how often without asking the
worker."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


def note(kind: str, **data: Any) -> None:
    """One JSON line per event (O_APPEND: lines from concurrent processes stay whole)."""
    out = os.environ.get("HYREX_TEST_OUT")
    if not out:
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def note_error(exc: Exception) -> None:
    note("on_error", type=type(exc).__name__, message=str(exc))


def _context() -> dict[str, Any]:
    ctx = get_hyrex_context()
    assert ctx is not None
    return {"task_id": str(ctx.task_id), "attempt": ctx.attempt_number}


class Nap(BaseModel):
    n: int
    seconds: float = 0.0


@hy.task(max_retries=3, retry_backoff=0, on_error=note_error)
def sleeper(job: Nap) -> int:
    """Notes its start, sleeps (600 s: until it is stopped), notes its end."""
    note("start", n=job.n, **_context())
    time.sleep(job.seconds)
    note("end", n=job.n, **_context())
    return job.n


@hy.task(max_retries=3, retry_backoff=0)
def quick(job: Nap) -> int:
    """Notes each execution of its body (to count them), after sleeping a little."""
    note("ran", n=job.n, **_context())
    if job.seconds:
        time.sleep(job.seconds)
    return job.n


@hy.task
def stamp(job: Nap) -> int:
    """Notes when its body began (a delayed task's lateness)."""
    note("began", n=job.n, **_context())
    return job.n


@hy.task(max_retries=3, retry_backoff=0)
def family(job: Nap) -> int:
    """Generation n sends generation n + 1 (the last one to the ``parked`` queue, which the
    test's worker does not serve, so it stays queued), then sleeps."""
    note("start", n=job.n, **_context())
    if job.n == 0:
        family.send({"n": 1, "seconds": job.seconds})
    elif job.n == 1:
        family.with_config(queue="parked").send({"n": 2, "seconds": job.seconds})
    time.sleep(job.seconds)
    note("end", n=job.n, **_context())
    return job.n


@hy.task(max_retries=3, retry_backoff=0, on_error=note_error)
def fails_when_released(job: Nap) -> int:
    """Waits until the test creates ``$HYREX_TEST_OUT/release-<n>`` (10 minutes at most), then
    raises."""
    note("start", n=job.n, **_context())
    release = os.path.join(os.environ.get("HYREX_TEST_OUT", "."), f"release-{job.n}")
    deadline = time.monotonic() + 600
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise RuntimeError(f"task {job.n} failed on purpose")
