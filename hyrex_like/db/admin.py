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
PRUNE_SHARE = 0.5
"""The share of its time a prune spends in statements: it rests as long as each took, so the
workers beside it keep most of the server (bench/lifecycle.py prune_drain)."""
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


class PruneWalk:
    """One walk of the task table's primary key that deletes the tasks in ``statuses`` (final
    ones) finished more than ``older_than`` seconds ago, and their runs, one short statement
    per `step`, so that a caller can spread it over time: the CLI runs it to the end, the
    worker's retention a fraction of a second between heartbeats. Each step is its own
    transaction on an autocommit connection: no lock outlives it.

    A task of a tree (a root and the tasks sent from inside it, at any depth) a task of which
    is queued or running stays, as does a step of a workflow that is not over (running, failed
    or paused) and a row another transaction holds (skipped, not waited for): a later walk takes
    them. At the end of the walk, completed and canceled workflows with no step left go too.
    """

    def __init__(
        self,
        older_than: float,
        statuses: Sequence[TaskStatus],
        *,
        batch: int = PRUNE_BATCH,
        scan: int = PRUNE_SCAN,
    ) -> None:
        self.older_than = older_than
        self.statuses = [str(s) for s in statuses]
        self.batch = batch
        self.scan = scan
        self.after = _FIRST_ID
        """The last id looked at: the walk goes on after it."""
        self.deleted = 0
        """Tasks deleted by this walk so far."""
        self._due: list[uuid.UUID] = []
        self._ended = False

    @property
    def done(self) -> bool:
        """The walk has looked at every task and deleted what it could."""
        return self._ended and not self._due

    def step(self, conn: psycopg.Connection[Any]) -> int:
        """One statement: delete the next batch of due tasks, or (with none in hand) look at
        the next ``scan`` tasks for due ones. Returns the tasks deleted. psycopg errors
        propagate."""
        if self._due:
            chunk, self._due = self._due[: self.batch], self._due[self.batch :]
            params = {"ids": chunk, "statuses": self.statuses, "older_than": self.older_than}
            cur = conn.execute(q("prune_tasks"), params, prepare=True)
            deleted = max(cur.rowcount, 0)
            self.deleted += deleted
            return deleted
        if not self._ended:
            params2: dict[str, Any] = {
                "after": self.after,
                "statuses": self.statuses,
                "older_than": self.older_than,
                "limit": self.scan,
            }
            row = conn.execute(q("prune_candidates"), params2, prepare=True).fetchone()
            last, due = row if row is not None else (None, [])
            if last is None:
                self._ended = True
                # the workflows whose steps are all gone now
                conn.execute(
                    q("prune_workflows"), {"older_than": self.older_than, "limit": self.scan}
                )
            else:
                self.after = last
                self._due = list(due)
        return 0


def prune(
    conn: psycopg.Connection[Any],
    older_than: float,
    statuses: Sequence[TaskStatus],
    *,
    batch: int = PRUNE_BATCH,
    pause: float = 0.0,
    share: float = PRUNE_SHARE,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Walk the whole table once (`PruneWalk`) on ``conn`` (autocommit), until done or
    ``should_stop()``. After each batch deleted it sleeps ``pause`` seconds, and after each
    step as long as keeps its statements to ``share`` of the time (1.0: no rest), so a prune
    beside busy workers leaves the server to them half the time. Returns how many tasks were
    deleted. psycopg errors propagate."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    walk = PruneWalk(older_than, statuses, batch=batch)
    while not walk.done and not should_stop():
        began = time.monotonic()
        deleted = walk.step(conn)
        rest = (time.monotonic() - began) * (1 / share - 1) + (pause if deleted else 0.0)
        if rest > 0:
            time.sleep(rest)
    return walk.deleted
