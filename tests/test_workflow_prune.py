"""Retention and workflows: a step of a workflow that is not over stays (its result feeds the
steps still to run), however old; a completed or canceled workflow goes with its steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry, TaskNotFound, WorkflowStatus
from hyrex_like.db.admin import prune
from hyrex_like.states import TASK_FINAL

DAY = 86_400.0
ALL_FINAL = sorted(TASK_FINAL)


@pytest.fixture
def db(registry: HyrexRegistry) -> Iterator[psycopg.Connection[Any]]:
    registry.migrate()
    with registry.store.connect() as conn:
        yield conn


def _workflow(registry: HyrexRegistry) -> Any:
    @registry.task
    def first(n: int) -> int:
        return n + 1

    @registry.task
    def second(n: int) -> int:
        return n * 2

    return registry.workflow("keep", [first, second])


def _complete(db: psycopg.Connection[Any], wid: Any, step: int, result: str) -> None:
    """Complete a step as any path would (the hand-off trigger queues the next)."""
    db.execute(
        "UPDATE task SET status = 'completed', result = %s::jsonb, finished_at = now()"
        " WHERE workflow_id = %s AND workflow_step = %s",
        (result, wid, step),
    )


def _age(db: psycopg.Connection[Any], wid: Any) -> None:
    db.execute(
        "UPDATE task SET finished_at = now() - interval '30 days'"
        " WHERE workflow_id = %s AND finished_at IS NOT NULL",
        (wid,),
    )
    db.execute(
        "UPDATE workflow SET finished_at = now() - interval '30 days'"
        " WHERE id = %s AND finished_at IS NOT NULL",
        (wid,),
    )


def _steps(db: psycopg.Connection[Any], wid: Any) -> list[tuple[int, str]]:
    rows = db.execute(
        "SELECT workflow_step, status FROM task WHERE workflow_id = %s ORDER BY 1", (wid,)
    ).fetchall()
    return [(int(s), str(st)) for s, st in rows]


def test_old_steps_of_a_paused_or_failed_workflow_stay(
    registry: HyrexRegistry, db: psycopg.Connection[Any]
) -> None:
    wf = _workflow(registry)
    paused = wf.send(1)
    _complete(db, paused.id, 0, "2")
    assert paused.pause() is True
    failed = wf.send(1)
    _complete(db, failed.id, 0, "2")
    db.execute(
        "UPDATE task SET status = 'failed', finished_at = now() WHERE workflow_id = %s"
        " AND workflow_step = 1",
        (failed.id,),
    )
    assert failed.refresh().status is WorkflowStatus.FAILED
    for run in (paused, failed):
        _age(db, run.id)
    assert prune(db, 7 * DAY, ALL_FINAL) == 0
    assert _steps(db, paused.id) == [(0, "completed"), (1, "paused")]
    assert _steps(db, failed.id) == [(0, "completed"), (1, "failed")]
    # and the paused one still resumes with step 0's result
    assert paused.resume() is WorkflowStatus.PAUSED
    assert db.execute(
        "SELECT args FROM task WHERE workflow_id = %s AND workflow_step = 1", (paused.id,)
    ).fetchone() == (2,)


def test_an_old_completed_or_canceled_workflow_goes_with_its_steps(
    registry: HyrexRegistry, db: psycopg.Connection[Any]
) -> None:
    wf = _workflow(registry)
    done = wf.send(1)
    _complete(db, done.id, 0, "2")
    _complete(db, done.id, 1, "4")
    assert done.refresh().status is WorkflowStatus.COMPLETED
    canceled = wf.send(1)
    assert canceled.cancel() is True
    young = wf.send(1)
    _complete(db, young.id, 0, "2")
    _complete(db, young.id, 1, "4")
    for run in (done, canceled):
        _age(db, run.id)
    assert prune(db, 7 * DAY, ALL_FINAL) == 3
    left = {r[0] for r in db.execute("SELECT id FROM workflow").fetchall()}
    assert left == {young.id}
    assert _steps(db, young.id) == [(0, "completed"), (1, "completed")]


def test_a_completed_run_whose_steps_retention_deleted_reads_completed_without_a_result(
    registry: HyrexRegistry, db: psycopg.Connection[Any]
) -> None:
    wf = _workflow(registry)
    run = wf.send(1)
    _complete(db, run.id, 0, "2")
    _complete(db, run.id, 1, "4")
    assert run.refresh().result == 4
    db.execute("DELETE FROM task WHERE workflow_id = %s", (run.id,))  # as a prune walk does
    assert run.refresh().status is WorkflowStatus.COMPLETED
    with pytest.raises(TaskNotFound, match="deleted by retention"):
        assert run.result is None
