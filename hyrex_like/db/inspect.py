"""The inspection reads (``hy.list_tasks``, ``hy.task_detail``, ``hy.stats``,
``hy.throughput``) on a pooled connection. Each picks the named statement whose plan uses an
index: a status filter has its own statement with the status written in it, so the partial
indexes on queued and running tasks match a generic plan as well as a custom one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..states import RunStatus, TaskStatus
from .pools import PooledConnection
from .queries import q
from .reads import read_on_pool
from .rows import RunRow, TaskRow

# The bounds of a walk down the primary key when no cursor or no ``since`` is given.
TOP_ID = uuid.UUID(int=(1 << 128) - 1)
BOTTOM_ID = uuid.UUID(int=0)


class SummaryRow(NamedTuple):
    """A task row without its payload and result, as the inspect_* statements return it."""

    id: uuid.UUID
    task_name: str
    queue: str
    status: TaskStatus
    priority: int
    attempts: int
    max_retries: int
    created_at: datetime
    run_after: datetime
    parent_id: uuid.UUID | None
    workflow_id: uuid.UUID | None


class PageRows(NamedTuple):
    """A page of tasks and, if the scan budget ended it, the id the walk stopped at."""

    rows: list[SummaryRow]
    next_id: uuid.UUID | None
    budget_ended: bool


class QueueRow(NamedTuple):
    queue: str
    ready: int
    waiting: int
    running: int
    oldest_ready_seconds: float | None
    concurrency_limit: int | None
    paused: bool


class Ended(NamedTuple):
    """Attempts of a queue that ended one way in a window (queue_minute)."""

    queue: str
    status: RunStatus
    attempts: int
    run_seconds: float


def _summary(r: tuple[Any, ...]) -> SummaryRow:
    return SummaryRow(r[0], r[1], r[2], TaskStatus(r[3]), *r[4:11])


def _statement(status: TaskStatus | None, queue: str | None) -> str | None:
    """The statement for a status filter, or None: walk the primary key (`inspect_tasks`)."""
    if status is TaskStatus.QUEUED:
        return "inspect_tasks_queued" if queue is None else "inspect_tasks_queued_in_queue"
    if status is TaskStatus.RUNNING:
        return "inspect_tasks_running" if queue is None else "inspect_tasks_running_in_queue"
    if status is TaskStatus.PAUSED:
        return "inspect_tasks_paused"
    return None  # any status, or a final one: most rows are final, so walk by id


def list_tasks(
    pool: ConnectionPool[PooledConnection],
    *,
    name: str | None,
    status: TaskStatus | None,
    queue: str | None,
    since: datetime | None,
    floor: uuid.UUID | None,
    after: uuid.UUID | None,
    limit: int,
    budget: int,
) -> PageRows:
    """Up to ``limit`` tasks older than ``after`` (ids below it), newest first. For an
    unindexed filter the walk reads at most ``budget`` rows: a page may come back short, with
    the id it stopped at to go on from."""
    params: dict[str, Any] = {
        "name": name,
        "queue": queue,
        "status": None if status is None else str(status),
        "since": since,
        "floor": floor or BOTTOM_ID,
        "after": after or TOP_ID,
        "limit": limit,
        "budget": budget,
    }
    statement = _statement(status, queue)

    def read(c: psycopg.Connection[Any]) -> PageRows:
        if statement is not None:
            rows = [_summary(r) for r in c.execute(q(statement), params).fetchall()]
            full = len(rows) == limit
            return PageRows(rows, rows[-1].id if full else None, False)
        rows = [_summary(r) for r in c.execute(q("inspect_tasks"), params).fetchall()]
        if len(rows) == limit:
            return PageRows(rows, rows[-1].id, False)
        last = c.execute(q("inspect_tasks_scanned"), params).fetchone()
        if last is None:
            return PageRows(rows, None, False)  # the walk reached the end
        return PageRows(rows, last[0], True)

    return read_on_pool(pool, read, "listing tasks")


def task_detail(
    pool: ConnectionPool[PooledConnection], task_id: uuid.UUID
) -> tuple[TaskRow, list[RunRow], SummaryRow | None, list[SummaryRow]] | None:
    """A task's row, its runs (oldest first), its parent and its first 200 children."""

    def read(c: psycopg.Connection[Any]) -> Any:
        with c.cursor(row_factory=dict_row) as cur:
            row = cur.execute(q("get_task"), {"id": task_id}).fetchone()
            if row is None:
                return None
            runs = cur.execute(q("get_task_runs"), {"id": task_id}).fetchall()
        parent = None
        if row["parent_id"] is not None:
            found = c.execute(q("inspect_task_summary"), {"id": row["parent_id"]}).fetchone()
            parent = _summary(found) if found else None
        children = [_summary(r) for r in c.execute(q("inspect_children"), {"id": task_id})]
        return row, runs, parent, children

    got = read_on_pool(pool, read, f"reading task {task_id}")
    if got is None:
        return None
    row, runs, parent, children = got
    return (
        TaskRow(**(row | {"status": TaskStatus(row["status"])})),
        [RunRow(**(r | {"status": RunStatus(r["status"])})) for r in runs],
        parent,
        children,
    )


def summary(pool: ConnectionPool[PooledConnection], task_id: uuid.UUID) -> SummaryRow | None:
    """One task's summary row (None: no such task)."""

    def read(c: psycopg.Connection[Any]) -> SummaryRow | None:
        found = c.execute(q("inspect_task_summary"), {"id": task_id}).fetchone()
        return _summary(found) if found else None

    return read_on_pool(pool, read, f"reading task {task_id}")


def queue_stats(
    pool: ConnectionPool[PooledConnection], minutes: int
) -> tuple[list[QueueRow], list[Ended], datetime, datetime, int]:
    """Per queue: its counts and settings; the attempts that ended in the last ``minutes``
    (and the window's start, and now); and how many workers run."""

    def read(c: psycopg.Connection[Any]) -> Any:
        params = {"minutes": minutes}
        queues = [QueueRow(*r) for r in c.execute(q("inspect_queue_stats"), params)]
        ended = c.execute(q("inspect_throughput"), params).fetchall()
        alive = c.execute(q("inspect_workers_alive")).fetchone()
        start, now = c.execute(q("inspect_window"), params).fetchone() or (None, None)
        return queues, ended, start, now, int(alive[0]) if alive else 0

    queues, ended, start, now, alive = read_on_pool(pool, read, "reading queue statistics")
    return (
        queues,
        [Ended(r[0], RunStatus(r[1]), int(r[2]), float(r[3])) for r in ended],
        start,
        now,
        alive,
    )


def minute_counts(
    pool: ConnectionPool[PooledConnection], minutes: int
) -> list[tuple[datetime, str, RunStatus, int]]:
    """Attempts ended per minute, queue and run status over the last ``minutes``, oldest
    first."""

    def read(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return c.execute(q("inspect_throughput_minutes"), {"minutes": minutes}).fetchall()

    rows = read_on_pool(pool, read, "reading throughput")
    return [(r[0], r[1], RunStatus(r[2]), int(r[3])) for r in rows]
