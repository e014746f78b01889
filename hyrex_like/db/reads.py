"""Reads on a pooled connection: a task and its runs (for handles), and small admin reads."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..states import RunStatus, TaskStatus
from .errors import _translate
from .pools import PooledConnection
from .queries import q
from .rows import RunRow, TaskRow


def get_task(
    pool: ConnectionPool[PooledConnection], task_id: uuid.UUID
) -> tuple[TaskRow | None, list[RunRow]]:
    """`Store.get_task`."""
    try:
        with pool.connection() as c:
            with c.cursor(row_factory=dict_row) as cur:
                row = cur.execute(q("get_task"), {"id": task_id}).fetchone()
                runs = cur.execute(q("get_task_runs"), {"id": task_id}).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, f"reading task {task_id}") from exc
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
