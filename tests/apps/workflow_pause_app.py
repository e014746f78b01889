"""The app of the workflow pause/resume/cancel tests (tests/test_workflow_pause.py): three-step
workflows whose middle step runs long (until the test releases it, or for a while), with bodies
noting what they do in ``$HYREX_TEST_OUT/events.jsonl`` (one JSON line per event, with the pid
and the attempt), so a test sees what ran, when and how often without asking the worker."""

from __future__ import annotations

import fcntl
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


def _context() -> dict[str, Any]:
    ctx = get_hyrex_context()
    assert ctx is not None
    return {"task_id": str(ctx.task_id), "attempt": ctx.attempt_number}


def _out(name: str) -> str:
    return os.path.join(os.environ.get("HYREX_TEST_OUT", "."), name)


class Job(BaseModel):
    n: int
    seconds: float = 0.0
    """How long ``cycle`` runs."""


@hy.task(max_retries=3, retry_backoff=0)
def first(job: Job) -> Job:
    note("first", n=job.n, **_context())
    return job


@hy.task(max_retries=3, retry_backoff=0)
def hold(job: Job) -> Job:
    """Notes its start (with its arguments), waits until the test creates
    ``$HYREX_TEST_OUT/release-<n>`` (10 minutes at most), notes its end."""
    note("start", n=job.n, args=job.model_dump(), **_context())
    release = _out(f"release-{job.n}")
    deadline = time.monotonic() + 600
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    note("end", n=job.n, **_context())
    return job


@hy.task(max_retries=3, retry_backoff=0)
def cycle(job: Job) -> Job:
    """Runs ``job.seconds``, holding an exclusive lock on ``$HYREX_TEST_OUT/cycle-<n>.lock``
    the whole time (released when its process dies): a second body of the step running at the
    same time notes ``overlap``."""
    fd = os.open(_out(f"cycle-{job.n}.lock"), os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        note("overlap", n=job.n, **_context())
        fcntl.flock(fd, fcntl.LOCK_EX)
    note("start", n=job.n, args=job.model_dump(), **_context())
    time.sleep(job.seconds)
    note("end", n=job.n, **_context())
    os.close(fd)
    return job


@hy.task(max_retries=3, retry_backoff=0)
def last(job: Job) -> int:
    note("last", n=job.n, **_context())
    return job.n


@hy.task
def ping(job: Job) -> int:
    """A plain task: the worker still serves (on any queue it is sent to)."""
    note("ping", n=job.n, **_context())
    return job.n


pipeline = hy.workflow("pause_pipeline", [first, hold, last])
"""first -> hold (until released) -> last, all on the default queue."""

parked = hy.workflow("pause_parked", [first, hold.with_config(queue="later"), last])
"""As ``pipeline``, its middle step on the ``later`` queue (a test's first worker serves only
``default``, so the step waits queued between steps)."""

cycling = hy.workflow("pause_cycling", [first, cycle, last])
"""first -> cycle (runs job.seconds) -> last."""
