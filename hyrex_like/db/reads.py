"""Reads on a pooled connection: a task and its runs (for handles), and small admin reads."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..states import RunStatus, TaskStatus
from .errors import _translate
from .pools import PooledConnection
from .queries import q
from .rows import RunRow, TaskRow

T = TypeVar("T")


def read_on_pool(
    pool: ConnectionPool[PooledConnection],
    read: Callable[[psycopg.Connection[Any]], T],
    what: str,
) -> T:
    """``read`` on a pooled connection; if that connection turns out dead (the server
    restarted, or its backend was terminated while it sat in the pool), once more on a fresh
    one, as a send is. Errors come out as the library's (``what`` names the read)."""
    try:
        with pool.connection() as c:
            try:
                return read(c)
            except psycopg.Error:
                if not c.broken:
                    raise
        pool.check()  # drops every idle connection the restart killed
        with pool.connection() as c:
            return read(c)
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc
    raise AssertionError("unreachable: both paths above return or raise")


def get_task(
    pool: ConnectionPool[PooledConnection], task_id: uuid.UUID
) -> tuple[TaskRow | None, list[RunRow]]:
    """`Store.get_task`."""

    def read(c: psycopg.Connection[Any]) -> tuple[Any, list[Any]]:
        with c.cursor(row_factory=dict_row) as cur:
            row = cur.execute(q("get_task"), {"id": task_id}).fetchone()
            return row, cur.execute(q("get_task_runs"), {"id": task_id}).fetchall()

    row, runs = read_on_pool(pool, read, f"reading task {task_id}")
    return (
        (TaskRow(**(row | {"status": TaskStatus(row["status"])})) if row else None),
        [RunRow(**(r | {"status": RunStatus(r["status"])})) for r in runs],
    )


def execute(
    pool: ConnectionPool[PooledConnection], name: str, params: Mapping[str, Any] | None
) -> list[tuple[Any, ...]]:
    """`Store.execute`."""
    try:
        with pool.connection() as c:
            cur = c.execute(q(name), params)
            return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise _translate(exc, name) from exc


def schedule_states(
    pool: ConnectionPool[PooledConnection], names: Sequence[str]
) -> dict[str, tuple[datetime, uuid.UUID, TaskStatus | None]]:
    """`Store.schedule_states`."""
    try:
        with pool.connection() as c:
            rows = c.execute(q("schedule_states"), {"names": list(names)}).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, "reading the schedules' last ticks") from exc
    return {
        name: (tick.astimezone(UTC), task_id, TaskStatus(status) if status is not None else None)
        for name, tick, task_id, status in rows
    }
