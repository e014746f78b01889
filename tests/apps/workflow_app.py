"""The app of the workflow tests (tests/test_workflow_run.py, tests/test_workflow_pause.py).

Its registry is bound like the other test apps: in a test process by the ``app_registry``
fixture, in a worker by ``HYREX_LIKE_DATABASE_URL``/``HYREX_LIKE_SCHEMA``. Every step body
notes its start (and a few other events) as one JSON line in ``$HYREX_TEST_OUT/events.jsonl``
with its task id, task name and attempt, so a test counts body starts without asking the
worker (`tests.helpers.read_events`).

Workflows:

- ``archive_batch``: inspect (Batch -> list[int]) -> archive (queue q1) -> stage (queue q2,
  priority 5) -> str. ``plain_seq``: the same tasks with default queues and priorities.
- ``etl``: extract >> transform >> [load_a, load_b] >> report; report takes ``Loaded`` (one
  field per predecessor step) and returns a ``Report`` model.
- ``flaky_seq``: prepare >> flaky >> finish, on_failure=record_failure. ``flaky`` (2 retries,
  0.5 s backoff, on_error noted) fails while its attempt number is <= ``Job.fail_times`` or
  while the file ``Job.fail_until`` does not exist (create it to let a resume succeed).
- ``slow_seq``: prepare >> slow >> finish, on_failure=record_failure. ``slow`` waits until the
  file ``Job.release`` exists (``Job.wait_seconds`` at most, then raises), reporting progress.
- ``timeout_seq``: prepare >> slow (timeout 1 s, no retries) >> finish.
- ``progress_seq``: prepare >> counted >> finish; ``counted`` reports ``Job.progress_steps``
  progress values, then waits for ``Job.release`` like ``slow`` if it is given.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, Workflow, WorkflowFailure, get_hyrex_context

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


def started(name: str, **data: Any) -> None:
    """Note that a step body began: its task's id and name and the attempt."""
    ctx = get_hyrex_context()
    extra = {"task_id": str(ctx.task_id), "attempt": ctx.attempt_number} if ctx else {}
    note("start", task=name, **extra, **data)


def progress(value: Any) -> bool:
    """Report progress if this version of the library can (update_progress); True if it did."""
    ctx = get_hyrex_context()
    report = getattr(ctx, "update_progress", None)
    if report is None:
        return False
    report(value)
    return True


def note_error(exc: Exception) -> None:
    note("on_error", type=type(exc).__name__, message=str(exc))


class Batch(BaseModel):
    n: int


class Loaded(BaseModel):
    """What ``report`` gets: the results of its predecessor steps, by step name."""

    load_a: int
    load_b: int


class Report(BaseModel):
    total: int
    count: int
    label: str


class Job(BaseModel):
    """The payload passed along the ``*_seq`` workflows (prepare returns it unchanged)."""

    n: int
    fail_times: int = 0
    """flaky fails while its attempt number is <= this."""
    fail_until: str | None = None
    """flaky fails while this file does not exist."""
    release: str | None = None
    """slow (and counted) wait until this file exists."""
    wait_seconds: float = 60.0
    """How long slow waits for ``release`` before it raises."""
    progress_steps: int = 0
    """How many progress values counted reports."""


class StepFailed(RuntimeError):
    pass


# ---------------------------------------------------------------- sequence and DAG tasks


@hy.task
def inspect(batch: Batch) -> list[int]:
    started("inspect")
    return list(range(batch.n))


@hy.task
def archive(items: list[int]) -> int:
    started("archive")
    return sum(items)


@hy.task
def stage(total: int) -> str:
    started("stage")
    return f"staged {total}"


@hy.task
def extract(batch: Batch) -> list[int]:
    started("extract")
    return list(range(1, batch.n + 1))


@hy.task
def transform(items: list[int]) -> list[int]:
    started("transform")
    return [x * 10 for x in items]


@hy.task
def load_a(items: list[int]) -> int:
    started("load_a")
    return sum(items)


@hy.task
def load_b(items: list[int]) -> int:
    started("load_b")
    return len(items)


@hy.task
def report(loaded: Loaded) -> Report:
    started("report")
    label = f"{loaded.load_a}/{loaded.load_b}"
    return Report(total=loaded.load_a, count=loaded.load_b, label=label)


# ---------------------------------------------------------------- failing, slow, progress


def _wait_for(path: str | None, seconds: float, what: str) -> None:
    """Wait until ``path`` exists (at most ``seconds``), reporting how long it waited."""
    if path is None:
        return
    deadline = time.monotonic() + seconds
    ticks = 0
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what}: {path} did not appear within {seconds}s")
        ticks += 1
        progress({"waited": ticks})
        time.sleep(0.05)


@hy.task
def prepare(job: Job) -> Job:
    started("prepare", n=job.n)
    return job


@hy.task(max_retries=2, retry_backoff=0.5, on_error=note_error)
def flaky(job: Job) -> Job:
    ctx = get_hyrex_context()
    attempt = ctx.attempt_number if ctx else 1
    started("flaky", n=job.n)
    if attempt <= job.fail_times:
        raise StepFailed(f"flaky failed on purpose (attempt {attempt} <= {job.fail_times})")
    if job.fail_until is not None and not os.path.exists(job.fail_until):
        raise StepFailed(f"flaky failed on purpose ({job.fail_until} does not exist)")
    return job


@hy.task(max_retries=0)
def slow(job: Job) -> Job:
    started("slow", n=job.n)
    _wait_for(job.release, job.wait_seconds, "slow")
    note("end", task="slow", n=job.n)
    return job


@hy.task
def counted(job: Job) -> Job:
    started("counted", n=job.n)
    for i in range(1, job.progress_steps + 1):
        progress({"done": i, "total": job.progress_steps})
    _wait_for(job.release, job.wait_seconds, "counted")
    return job


@hy.task
def finish(job: Job) -> str:
    started("finish", n=job.n)
    return f"finished {job.n}"


@hy.task
def record_failure(failure: WorkflowFailure) -> None:
    """The on_failure handler: notes the WorkflowFailure it got."""
    note("on_failure", **failure.model_dump(mode="json"))


# ---------------------------------------------------------------- workflows

archive_batch: Workflow[Batch, str] = hy.workflow(
    "archive_batch",
    [inspect, archive.with_config(queue="q1"), stage.with_config(queue="q2", priority=5)],
)
plain_seq: Workflow[Batch, str] = hy.workflow("plain_seq", [inspect, archive, stage])
etl: Workflow[Batch, Report] = hy.workflow(
    "etl", extract >> transform >> [load_a, load_b] >> report, on_failure=record_failure
)
flaky_seq: Workflow[Job, str] = hy.workflow(
    "flaky_seq", prepare >> flaky >> finish, on_failure=record_failure
)
slow_seq: Workflow[Job, str] = hy.workflow(
    "slow_seq", prepare >> slow >> finish, on_failure=record_failure
)
timeout_seq: Workflow[Job, str] = hy.workflow(
    "timeout_seq",
    [prepare, slow.with_config(timeout_seconds=1.0, max_retries=0), finish],
    on_failure=record_failure,
)
progress_seq: Workflow[Job, str] = hy.workflow("progress_seq", prepare >> counted >> finish)
