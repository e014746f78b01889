"""Workflows in the database: sending one (its row and its first steps' tasks, one statement),
reading one with its steps, listing them, and pausing, resuming and canceling one.

The hand-off from a step to the next is not here: it is the ``task_workflow_advance`` trigger
(sql/0007_workflows.sql), in the transaction that records the step's completion.

Pause, resume and cancel each run in one transaction that first locks the workflow's unfinished
step tasks, then the workflow row: the order a step's completion takes them in (its finish
statement holds its task row, then the trigger the workflow row), so the two wait for each other
instead of deadlocking. A deadlock the database still finds (parallel steps finishing in one
batch while a pause runs) is retried.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from ..errors import WorkflowNotFound, WorkflowStateError
from ..states import TaskStatus, WorkflowState
from ..workflow_status import WorkflowStatus, summarize
from .admin import control_channel
from .errors import _translate
from .queries import q
from .reads import read_on_pool
from .rows import TaskRow
from .sends import _in_schema, _lost_connection

if TYPE_CHECKING:
    from .client import Store

T = TypeVar("T")
_RETRIES = 5


@dataclass(frozen=True)
class WorkflowRow:
    """A ``workflow`` row as read back."""

    id: uuid.UUID
    name: str
    state: str  # running, paused, canceled, completed: the control state, not the summary
    steps: list[dict[str, Any]]
    args: Any
    on_failure: dict[str, Any] | None
    on_failure_task_id: uuid.UUID | None
    created_at: datetime
    paused_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class WorkflowSummary:
    """One line of `list_workflows`."""

    id: uuid.UUID
    name: str
    status: WorkflowStatus
    current_step: str | None
    steps: int
    created_at: datetime
    finished_at: datetime | None


def insert_workflow(
    store: Store,
    params: dict[str, Any],
    conn: psycopg.Connection[Any] | None = None,
) -> None:
    """Insert a workflow and its first steps' tasks (``params``: id, name, steps, args,
    on_failure as JSON text; sources, the first steps' indexes). On ``conn``, in the caller's
    transaction; else on a pooled connection, tried once more on a fresh connection if it
    turns out dead (the id makes the second try a no-op if the first committed)."""
    what = f"sending workflow {params['name']}"
    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                cur.execute(q("insert_workflow"), params)
            return
        lost: psycopg.Error | None = None
        with store.pool().connection() as c:
            try:
                c.execute(q("insert_workflow"), params)
            except psycopg.Error as exc:
                lost = _lost_connection(c, exc)
        if lost is not None:
            store._send_again(lambda c: c.execute(q("insert_workflow"), params), what, lost)
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc


def get_workflow(store: Store, workflow_id: uuid.UUID) -> tuple[WorkflowRow, list[TaskRow]]:
    """A workflow's row and its steps' task rows (in step order); `WorkflowNotFound`."""

    def read(c: psycopg.Connection[Any]) -> tuple[Any, list[Any]]:
        with c.cursor(row_factory=dict_row) as cur:
            row = cur.execute(q("get_workflow"), {"id": workflow_id}).fetchone()
            return row, cur.execute(q("get_workflow_tasks"), {"id": workflow_id}).fetchall()

    row, tasks = read_on_pool(store.pool(), read, f"reading workflow {workflow_id}")
    if row is None:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist in this database/schema")
    return WorkflowRow(**row), [TaskRow(**(t | {"status": TaskStatus(t["status"])})) for t in tasks]


def list_workflows(
    store: Store,
    *,
    name: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[WorkflowSummary]:
    """Workflows newest first, ``limit`` at most, older than ``before`` (created_at, id): the
    last line of the previous page."""
    params = {
        "name": name,
        "limit": limit,
        "before": before[0] if before else None,
        "before_id": before[1] if before else None,
    }
    rows = read_on_pool(
        store.pool(),
        lambda c: c.execute(q("list_workflows"), params).fetchall(),
        "listing workflows",
    )
    out = []
    for wid, wname, state, created, finished, n, statuses, started, attempts, steps in rows:
        status, deciding = summarize(state, _step_states(n, statuses, started, attempts))
        current = steps[deciding]["name"] if deciding is not None else None
        out.append(WorkflowSummary(wid, wname, status, current, n, created, finished))
    return out


def _step_states(
    n: int, statuses: Sequence[str], started: Sequence[int], attempts: Sequence[int]
) -> list[tuple[TaskStatus, int] | None]:
    states: list[tuple[TaskStatus, int] | None] = [None] * n
    for i, status, tried in zip(started, statuses, attempts, strict=True):
        states[i] = (TaskStatus(status), tried)
    return states


def step_states(n: int, tasks: Sequence[TaskRow]) -> list[tuple[TaskStatus, int] | None]:
    """`summarize`'s input from a workflow's ``n`` steps and their task rows."""
    states: list[tuple[TaskStatus, int] | None] = [None] * n
    for t in tasks:
        if t.workflow_step is not None and 0 <= t.workflow_step < n:
            states[t.workflow_step] = (t.status, t.attempt_count)
    return states


# -- pause, resume, cancel ---------------------------------------------------------------


def pause(store: Store, workflow_id: uuid.UUID) -> bool:
    """Hold a running workflow: its queued steps wait, its running steps are stopped by their
    workers (their runs end interrupted, not counted) and held; no later step starts. False if
    it is paused already; `WorkflowStateError` if it is completed, canceled or failed."""

    def act(c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow) -> bool:
        if status is WorkflowStatus.PAUSED:
            return False
        if status not in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
            hint = "resume or cancel it" if status is WorkflowStatus.FAILED else "nothing runs"
            raise WorkflowStateError(
                f"cannot pause workflow {row.name} ({row.id}): it is {status}; {hint}"
            )
        c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.PAUSED})
        c.execute(
            q("pause_workflow_steps"),
            {"id": row.id, "control": control_channel(store.schema)},
        )
        return True

    return _change(store, workflow_id, "pausing", act)


def resume(store: Store, workflow_id: uuid.UUID) -> WorkflowStatus:
    """Go on with a paused workflow (its held steps are queued again with the same arguments,
    and the steps whose predecessors completed meanwhile start) or a failed one (its failed
    steps are queued again with a fresh retry budget). Returns what it was (paused or failed);
    `WorkflowStateError` for any other status."""

    def act(c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow) -> WorkflowStatus:
        if status is WorkflowStatus.PAUSED:
            c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.RUNNING})
            c.execute(q("resume_workflow_steps"), {"id": row.id})
            c.execute(q("start_ready_steps"), {"id": row.id})
        elif status is WorkflowStatus.FAILED:
            c.execute(q("retry_failed_steps"), {"id": row.id})
        else:
            raise WorkflowStateError(
                f"cannot resume workflow {row.name} ({row.id}): it is {status}; only a failed "
                "or paused workflow can be resumed"
            )
        return status

    return _change(store, workflow_id, "resuming", act)


def cancel(store: Store, workflow_id: uuid.UUID) -> bool:
    """End a workflow (canceled): its queued and held steps are canceled, its running steps
    stopped by their workers; nothing more starts. False if it had completed or was canceled
    already."""

    def act(c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow) -> bool:
        if (
            row.state in (WorkflowState.COMPLETED, WorkflowState.CANCELED)
            or status is WorkflowStatus.COMPLETED
        ):
            return False
        c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.CANCELED})
        c.execute(
            q("cancel_workflow_steps"),
            {"id": row.id, "control": control_channel(store.schema)},
        )
        return True

    return _change(store, workflow_id, "canceling", act)


def _change(
    store: Store,
    workflow_id: uuid.UUID,
    doing: str,
    act: Callable[[psycopg.Connection[Any], WorkflowStatus, WorkflowRow], T],
) -> T:
    what = f"{doing} workflow {workflow_id}"
    for attempt in range(_RETRIES):
        try:
            with store.pool().connection() as c:
                with c.transaction():
                    c.execute(q("lock_workflow_steps"), {"id": workflow_id})
                    if c.execute(q("lock_workflow"), {"id": workflow_id}).fetchone() is None:
                        raise WorkflowNotFound(
                            f"workflow {workflow_id} does not exist in this database/schema"
                        )
                    with c.cursor(row_factory=dict_row) as cur:
                        found = cur.execute(q("get_workflow"), {"id": workflow_id}).fetchone()
                        tasks = cur.execute(q("get_workflow_tasks"), {"id": workflow_id}).fetchall()
                    assert found is not None
                    row = WorkflowRow(**found)
                    rows = [TaskRow(**(t | {"status": TaskStatus(t["status"])})) for t in tasks]
                    status, _ = summarize(row.state, step_states(len(row.steps), rows))
                    return act(c, status, row)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == _RETRIES - 1:
                raise _translate(exc, what) from exc
            time.sleep(0.01 * (attempt + 1))
        except psycopg.Error as exc:
            raise _translate(exc, what) from exc
    raise AssertionError("unreachable")
