"""Changing tasks by hand: cancel, retry and prune (retention), on a pooled connection or a
connection of the caller's (the CLI's, the worker's retention service's)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import KeyInUse
from ..states import TaskStatus
from .errors import _translate
from .pools import PooledConnection
from .queries import q

PRUNE_BATCH = 500
"""Tasks deleted per statement (each in its own short transaction)."""
PRUNE_SCAN = 10_000
"""Candidate ids read per walk of the primary key."""
_FIRST_ID = uuid.UUID(int=0)


def control_channel(schema: str) -> str:
    """The NOTIFY channel that carries cancels to the workers of ``schema`` (at most 60
    characters: schema names are at most 50)."""
    return "hyrex_ctl_" + schema


def cancel(
    pool: ConnectionPool[PooledConnection], schema: str, task_id: uuid.UUID, children: bool
) -> list[tuple[uuid.UUID, TaskStatus]]:
    """Cancel ``task_id`` (and with ``children`` its descendants): the tasks changed, each with
    its new status (`CANCELED`, or `RUNNING`: its worker was asked to stop it)."""
    params = {"id": task_id, "children": children, "control": control_channel(schema)}
    try:
        with pool.connection() as c:
            rows = c.execute(q("cancel_tasks"), params).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, f"canceling task {task_id}") from exc
    return [(row[0], TaskStatus(row[1])) for row in rows]


def retry(pool: ConnectionPool[PooledConnection], task_id: uuid.UUID) -> bool:
    """Queue a failed or canceled task again; False if it is in no such status."""
    try:
        with pool.connection() as c:
            return bool(c.execute(q("retry_task"), {"id": task_id}).fetchall())
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "task_idempotency_idx":
            raise KeyInUse(
                f"task {task_id} cannot be retried: its idempotency key is held by another "
                "live task of the same name (sent after this one failed or was canceled)"
            ) from None
        raise _translate(exc, f"retrying task {task_id}") from exc
    except psycopg.Error as exc:
        raise _translate(exc, f"retrying task {task_id}") from exc


def prune(
    conn: psycopg.Connection[Any],
    older_than: float,
    statuses: Sequence[TaskStatus],
    *,
    batch: int = PRUNE_BATCH,
    pause: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Delete the tasks in ``statuses`` (final ones) that finished more than ``older_than``
    seconds ago, and their runs, ``batch`` at a time, each batch its own transaction on
    ``conn`` (autocommit), sleeping ``pause`` seconds between batches. Returns how many tasks
    were deleted. psycopg errors propagate."""
    deleted = 0
    after = _FIRST_ID
    names = [str(s) for s in statuses]
    while not should_stop():
        params: dict[str, Any] = {
            "after": after,
            "statuses": names,
            "older_than": older_than,
            "limit": PRUNE_SCAN,
        }
        ids = [row[0] for row in conn.execute(q("prune_candidates"), params).fetchall()]
        if not ids:
            break
        after = ids[-1]
        for start in range(0, len(ids), batch):
            if should_stop():
                return deleted
            chunk = ids[start : start + batch]
            cur = conn.execute(
                q("prune_tasks"),
                {"ids": chunk, "statuses": names, "older_than": older_than},
                prepare=True,
            )
            deleted += max(cur.rowcount, 0)
            if pause:
                time.sleep(pause)
        if len(ids) < PRUNE_SCAN:
            break
    return deleted
