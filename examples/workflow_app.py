"""The workflow example's tasks: a three-step pipeline with typed hand-offs.

fetch -> clean -> summarize: each step's parameter type is the previous step's return type,
checked when ``hy.workflow(...)`` runs (a mismatch raises at import, naming both steps).
``clean`` fails on its first attempt, for good (max_retries=0), as a lookup service that is
down would: the workflow ends failed, ``alert`` runs once with the error, and a resume queues
``clean`` again with the same arguments. ``summarize`` reports its progress as it goes.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, Workflow, WorkflowFailure, get_hyrex_context

hy = HyrexRegistry()


class Batch(BaseModel):
    batch_id: str
    size: int


class Readings(BaseModel):
    batch_id: str
    values: list[float]


class Cleaned(BaseModel):
    batch_id: str
    values: list[float]
    dropped: int


class Report(BaseModel):
    batch_id: str
    count: int
    mean: float
    dropped: int


@hy.task(queue="pipeline", max_retries=0)
def fetch(batch: Batch) -> Readings:
    values = [float((i * 37) % 101) for i in range(batch.size)]
    values[::10] = [-1.0] * len(values[::10])  # a broken sensor: every tenth reading
    return Readings(batch_id=batch.batch_id, values=values)


@hy.task(queue="pipeline", max_retries=0)
def clean(readings: Readings) -> Cleaned:
    """Fails on its first attempt: no retries, so the workflow stops at this step until
    someone resumes it (the attempt numbers go on, so the resumed run is attempt 2)."""
    ctx = get_hyrex_context()
    if ctx is not None and ctx.attempt_number == 1:
        raise ConnectionError("calibration service unavailable")
    kept = [v for v in readings.values if v >= 0]
    return Cleaned(
        batch_id=readings.batch_id, values=kept, dropped=len(readings.values) - len(kept)
    )


@hy.task(queue="pipeline", max_retries=2)
def summarize(cleaned: Cleaned) -> Report:
    """Works through the values in chunks, reporting how far it got after each."""
    ctx = get_hyrex_context()
    chunks = 8
    size = max(1, len(cleaned.values) // chunks)
    total = 0.0
    for done in range(0, len(cleaned.values), size):
        total += sum(cleaned.values[done : done + size])
        time.sleep(0.25)  # the slow part of a real step
        if ctx is not None:
            ctx.update_progress(
                {"done": min(done + size, len(cleaned.values)), "total": len(cleaned.values)}
            )
    count = len(cleaned.values)
    return Report(
        batch_id=cleaned.batch_id,
        count=count,
        mean=round(total / count, 3) if count else 0.0,
        dropped=cleaned.dropped,
    )


@hy.task(queue="pipeline")
def alert(failure: WorkflowFailure) -> str:
    """The workflow's on_failure task: runs once each time a step fails for good."""
    error = failure.error or {}
    return (
        f"workflow {failure.workflow_name} failed at step {failure.step}: "
        f"{error.get('type')}: {error.get('message')}"
    )


pipeline: Workflow[Batch, Report] = hy.workflow(
    "nightly_readings", [fetch, clean, summarize], on_failure=alert
)
