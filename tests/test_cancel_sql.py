"""The database's side of a cancel, against a real server, without a worker: the statements a
worker runs, called as it calls them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry
from hyrex_like.db import FinishedRow, WorkerQueries
from hyrex_like.states import RunStatus, TaskStatus


@pytest.fixture
def setup(registry: HyrexRegistry) -> Iterator[tuple[HyrexRegistry, Any, psycopg.Connection[Any]]]:
    @registry.task(max_retries=3)
    def job(n: int) -> int:
        return n

    registry.migrate()
    conn = registry.store.connect(worker=True)
    try:
        yield registry, job, conn
    finally:
        conn.close()


def _claim(conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> list[Any]:
    WorkerQueries.register(conn, worker_id, "host", 1, [], ["job"], 1)
    rows, _, _ = WorkerQueries.claim(conn, worker_id, ["job"], [], 10)
    return rows


def _finished(row: Any, status: RunStatus, retryable: bool) -> FinishedRow:
    now = time.time()
    return FinishedRow(
        row.task_id, row.task_name, row.attempt, status, retryable, None, "TaskCanceled",
        "stopped", None, now, now,
    )  # fmt: skip


def test_a_canceled_run_without_a_cancel_request_is_requeued_as_interrupted(setup):
    # A worker may act on a cancel request of an earlier attempt (one retried by hand since):
    # the row, not the worker, says whether the task was canceled.
    hy, job, conn = setup
    handle = job.send(1)
    worker_id = uuid.uuid4()
    [row] = _claim(conn, worker_id)
    WorkerQueries.finish(conn, worker_id, [_finished(row, RunStatus.CANCELED, False)])
    handle.refresh()
    assert handle.status == TaskStatus.QUEUED
    assert handle.row.failure_count == 0 and handle.row.finished_at is None
    assert [r.status for r in handle.task_runs] == [RunStatus.INTERRUPTED]


def test_a_canceled_run_with_a_cancel_request_ends_the_task_canceled(setup):
    hy, job, conn = setup
    handle = job.send(1)
    worker_id = uuid.uuid4()
    [row] = _claim(conn, worker_id)
    assert hy.cancel(handle.id) is True  # running: a stop is requested
    assert handle.status == TaskStatus.RUNNING
    WorkerQueries.finish(conn, worker_id, [_finished(row, RunStatus.CANCELED, False)])
    handle.refresh()
    assert handle.status == TaskStatus.CANCELED and handle.row.finished_at is not None
    assert [r.status for r in handle.task_runs] == [RunStatus.CANCELED]


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED])
def test_an_attempt_ending_otherwise_after_a_cancel_request_ends_the_task_canceled(setup, status):
    hy, job, conn = setup
    handle = job.send(1)
    worker_id = uuid.uuid4()
    [row] = _claim(conn, worker_id)
    hy.cancel(handle.id)
    WorkerQueries.finish(conn, worker_id, [_finished(row, status, True)])
    handle.refresh()
    assert handle.status == TaskStatus.CANCELED  # not retried, not requeued
    assert [r.status for r in handle.task_runs] == [status]


def test_a_completed_attempt_wins_over_a_cancel_request(setup):
    hy, job, conn = setup
    handle = job.send(1)
    worker_id = uuid.uuid4()
    [row] = _claim(conn, worker_id)
    hy.cancel(handle.id)
    done = FinishedRow(
        row.task_id, row.task_name, row.attempt, RunStatus.COMPLETED, True, "1", None, None,
        None, time.time(), time.time(),
    )  # fmt: skip
    WorkerQueries.finish(conn, worker_id, [done])
    handle.refresh()
    assert handle.status == TaskStatus.COMPLETED and handle.result == 1


def test_a_claim_given_back_after_a_cancel_request_ends_canceled_with_no_run(setup):
    hy, job, conn = setup
    handle = job.send(1)
    worker_id = uuid.uuid4()
    [row] = _claim(conn, worker_id)
    hy.cancel(handle.id)
    WorkerQueries.give_back(conn, worker_id, [(row.task_id, row.attempt)])
    handle.refresh()
    assert handle.status == TaskStatus.CANCELED and handle.task_runs == []
