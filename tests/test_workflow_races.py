"""The hand-off against pause, resume, cancel and changes by hand, at the SQL level (no worker):
each step's status is changed as any path would change it (a worker's finish, a rescue), with
transactions held open to force the orders that matter."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry, WorkflowFailure, WorkflowStateError, WorkflowStatus
from hyrex_like.db.rows import FinishedRow
from hyrex_like.db.worker_queries import WorkerQueries
from hyrex_like.states import RunStatus

from .helpers import wait_until


@pytest.fixture
def db(registry: HyrexRegistry) -> Iterator[psycopg.Connection[Any]]:
    registry.migrate()
    with registry.store.connect() as conn:
        yield conn


@pytest.fixture
def chain(registry: HyrexRegistry) -> Any:
    """Three steps, one after the other; a failure handler."""

    @registry.task
    def one(n: int) -> int:
        return n + 1

    @registry.task(max_retries=0)
    def two(n: int) -> int:
        return n + 1

    @registry.task
    def three(n: int) -> int:
        return n + 1

    @registry.task
    def alarm(f: WorkflowFailure) -> None:
        pass

    return registry.workflow("chain", [one, two, three], on_failure=alarm)


def _set(conn: psycopg.Connection[Any], wid: Any, step: int, sql: str, *args: Any) -> None:
    conn.execute(
        f"UPDATE task SET {sql} WHERE workflow_id = %s AND workflow_step = %s",
        (*args, wid, step),
    )


def _steps(db: psycopg.Connection[Any], wid: Any) -> dict[int, str]:
    rows = db.execute(
        "SELECT workflow_step, status FROM task WHERE workflow_id = %s", (wid,)
    ).fetchall()
    return {int(s): str(st) for s, st in rows}


def test_a_last_step_that_completes_after_its_pause_completes_the_run(
    chain: Any, db: psycopg.Connection[Any]
) -> None:
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'completed', result = '2'")
    _set(db, run.id, 1, "status = 'completed', result = '3'")
    _set(db, run.id, 2, "status = 'running', attempt_count = 1")
    assert run.pause() is True  # its worker is asked to stop it...
    _set(db, run.id, 2, "status = 'completed', result = '4'")  # ...but it completed first
    assert run.refresh().status is WorkflowStatus.COMPLETED
    assert run.result == 4
    state = db.execute("SELECT state, finished_at IS NOT NULL FROM workflow").fetchone()
    assert state == ("completed", True)
    with pytest.raises(WorkflowStateError, match="it is completed"):
        run.resume()


def test_a_step_that_fails_for_good_while_paused_fails_the_run_and_calls_on_failure(
    chain: Any, db: psycopg.Connection[Any]
) -> None:
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'completed', result = '2'")
    _set(db, run.id, 1, "status = 'running', attempt_count = 1")
    assert run.pause() is True
    _set(db, run.id, 1, "status = 'failed', last_error = '{\"type\": \"E\"}'")
    handlers = db.execute("SELECT args FROM task WHERE task_name = 'alarm'").fetchall()
    assert len(handlers) == 1 and handlers[0][0]["step"] == "two"
    assert run.refresh().status is WorkflowStatus.PAUSED  # (the pause holds the run)
    assert run.resume() is WorkflowStatus.PAUSED
    assert run.refresh().status is WorkflowStatus.FAILED
    assert run.resume() is WorkflowStatus.FAILED
    assert _steps(db, run.id) == {0: "completed", 1: "queued"}


def test_a_step_canceled_by_hand_cancels_its_run(
    registry: HyrexRegistry, chain: Any, db: psycopg.Connection[Any]
) -> None:
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'completed', result = '2'")
    step = run.refresh().steps[1].handle
    assert step is not None and step.cancel() is True
    assert run.refresh().status is WorkflowStatus.CANCELED
    assert db.execute("SELECT state FROM workflow").fetchone() == ("canceled",)
    with pytest.raises(WorkflowStateError, match="resume the workflow"):
        step.retry()  # a step of a run that is over is not run again by hand
    with pytest.raises(WorkflowStateError):
        run.resume()


def test_a_failed_step_of_a_paused_run_is_not_retried_by_hand(
    chain: Any, db: psycopg.Connection[Any]
) -> None:
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'completed', result = '2'")
    _set(db, run.id, 1, "status = 'failed'")
    step = run.refresh().steps[1].handle
    assert step is not None
    assert step.retry() is True  # while the run goes on, a retry by hand is a resume
    assert _steps(db, run.id)[1] == "queued"


def test_a_hand_off_in_flight_during_a_pause_is_held_and_a_later_one_starts_nothing(
    registry: HyrexRegistry, chain: Any, db: psycopg.Connection[Any]
) -> None:
    """The pause commits the run's state first, then waits for every hand-off that may have
    read the old state (it holds a step row the pause locks) and holds what it inserted."""
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'running', attempt_count = 1")
    with registry.store.connect() as finishing:
        finishing.autocommit = False
        _set(finishing, run.id, 0, "status = 'completed', result = '2'")  # step 1 inserted
        paused: list[bool] = []
        pausing = threading.Thread(target=lambda: paused.append(run.pause()))
        pausing.start()
        # the state is committed at once; the steps wait for the hand-off in flight
        wait_until(
            lambda: db.execute("SELECT state FROM workflow").fetchone() == ("paused",),
            10,
            what="the paused state committed",
        )
        assert pausing.is_alive()
        finishing.commit()
    pausing.join(10)
    assert paused == [True]
    assert _steps(db, run.id) == {0: "completed", 1: "paused"}
    # a step that still completes now (its stop came too late) starts nothing more
    _set(db, run.id, 1, "status = 'completed', result = '3'")
    assert _steps(db, run.id) == {0: "completed", 1: "completed"}
    assert run.resume() is WorkflowStatus.PAUSED
    assert _steps(db, run.id) == {0: "completed", 1: "completed", 2: "queued"}


@pytest.mark.parametrize(
    ("run_status", "retryable", "task_status", "counted"),
    [
        ("canceled", False, "paused", 0),  # stopped by its worker for the pause: held
        ("failed", True, "failed", 1),  # no retries left (max_retries=0): it fails
        ("failed", False, "failed", 1),
    ],
)
def test_how_an_attempt_that_ends_after_its_pause_is_written(
    registry: HyrexRegistry,
    chain: Any,
    db: psycopg.Connection[Any],
    run_status: str,
    retryable: bool,
    task_status: str,
    counted: int,
) -> None:
    worker = uuid.uuid4()
    run = chain.send(1)
    _set(db, run.id, 0, "status = 'completed', result = '2'")
    task_id = run.refresh().steps[1].handle.id  # type: ignore[union-attr]
    _set(db, run.id, 1, "status = 'running', attempt_count = 1, worker_id = %s", worker)
    db.execute("INSERT INTO task_run (task_id, attempt_number) VALUES (%s, 1)", (task_id,))
    assert run.pause() is True
    now = time.time()
    row = FinishedRow(
        task_id, "two", 1, RunStatus(run_status), retryable, None, "E", "boom", None, now, now
    )
    WorkerQueries.finish(db, worker, [row])
    got = db.execute(
        "SELECT t.status, t.failure_count, r.status FROM task t JOIN task_run r"
        " ON r.task_id = t.id WHERE t.id = %s",
        (task_id,),
    ).fetchone()
    run_recorded = "interrupted" if run_status == "canceled" else "failed"
    assert got == (task_status, counted, run_recorded)
