"""Workflows in the database: sending one (its row and its first steps' tasks, one statement),
reading one with its steps, listing them, and pausing, resuming and canceling one.

The hand-off from a step to the next is not here: it is the ``task_workflow_advance`` trigger
(sql/0007_workflows.sql), in the transaction that records the step's completion.

Pause, resume and cancel each commit the run's new state first, then act on its steps in a
second transaction (see "pause, resume, cancel" below); a deadlock the database still finds
(parallel steps finishing in one batch while a pause runs) is retried.
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
        # The steps first, then the row: whatever commits in between, the row is at least as
        # new as the steps (a failed step's on_failure task id, a completed run's state are
        # written with the step's status, never before it). A row that says completed while
        # the steps read before it do not: the last step completed in between; read them again.
        with c.cursor(row_factory=dict_row) as cur:
            tasks = cur.execute(q("get_workflow_tasks"), {"id": workflow_id}).fetchall()
            row = cur.execute(q("get_workflow"), {"id": workflow_id}).fetchone()
            if (
                row is not None
                and row["state"] == WorkflowState.COMPLETED
                and (
                    len(tasks) < len(row["steps"])
                    or any(t["status"] != TaskStatus.COMPLETED for t in tasks)
                )
            ):
                tasks = cur.execute(q("get_workflow_tasks"), {"id": workflow_id}).fetchall()
            return row, tasks

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
# Each in two transactions. The first, under the workflow row's lock, decides from the run's
# summary and commits the new state: a hand-off (the trigger) that starts after it reads it. The
# second locks the run's unfinished step tasks, then the workflow row, checks the state is still
# the one written, and holds, releases or cancels the steps. A hand-off that read the old state
# holds a step row of that lock set, so the second transaction waits for it and then sees the
# steps it inserted (see the trigger's comment in sql/0007_workflows.sql).


def pause(store: Store, workflow_id: uuid.UUID) -> bool:
    """Hold a running workflow: its queued steps wait, its running steps are stopped by their
    workers (their runs end interrupted, not counted) and held; no later step starts. False if
    it is paused already; `WorkflowStateError` if it is completed, canceled or failed."""

    def decide(c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow) -> bool:
        if status is WorkflowStatus.PAUSED:
            return False
        if status not in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
            hint = "resume or cancel it" if status is WorkflowStatus.FAILED else "nothing runs"
            raise WorkflowStateError(
                f"cannot pause workflow {row.name} ({row.id}): it is {status}; {hint}"
            )
        c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.PAUSED})
        return True

    def act(c: psycopg.Connection[Any], decided: bool) -> None:
        if decided:
            params = {"id": workflow_id, "control": control_channel(store.schema)}
            c.execute(q("pause_workflow_steps"), params)

    return _change(store, workflow_id, "pausing", decide, WorkflowState.PAUSED, act)


def resume(store: Store, workflow_id: uuid.UUID) -> WorkflowStatus:
    """Go on with a paused workflow (its held steps are queued again with the same arguments,
    and the steps whose predecessors completed meanwhile start) or a failed one (its failed
    steps are queued again with a fresh retry budget). Returns what it was (paused or failed);
    `WorkflowStateError` for any other status."""

    def decide(
        c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow
    ) -> WorkflowStatus:
        if status is WorkflowStatus.PAUSED:
            c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.RUNNING})
        elif status is not WorkflowStatus.FAILED:
            raise WorkflowStateError(
                f"cannot resume workflow {row.name} ({row.id}): it is {status}; only a failed "
                "or paused workflow can be resumed"
            )
        return status

    def act(c: psycopg.Connection[Any], was: WorkflowStatus) -> None:
        if was is WorkflowStatus.PAUSED:
            c.execute(q("resume_workflow_steps"), {"id": workflow_id})
            c.execute(q("start_ready_steps"), {"id": workflow_id})
        else:
            c.execute(q("retry_failed_steps"), {"id": workflow_id})

    return _change(store, workflow_id, "resuming", decide, WorkflowState.RUNNING, act)


def cancel(store: Store, workflow_id: uuid.UUID) -> bool:
    """End a workflow (canceled): its queued and held steps are canceled, its running steps
    stopped by their workers; nothing more starts. False if it had completed or was canceled
    already."""

    def decide(c: psycopg.Connection[Any], status: WorkflowStatus, row: WorkflowRow) -> bool:
        over = (WorkflowState.COMPLETED, WorkflowState.CANCELED)
        if row.state in over or status is WorkflowStatus.COMPLETED:
            return False
        c.execute(q("set_workflow_state"), {"id": row.id, "state": WorkflowState.CANCELED})
        return True

    def act(c: psycopg.Connection[Any], decided: bool) -> None:
        if decided:
            params = {"id": workflow_id, "control": control_channel(store.schema)}
            c.execute(q("cancel_workflow_steps"), params)

    return _change(store, workflow_id, "canceling", decide, WorkflowState.CANCELED, act)


def _change(
    store: Store,
    workflow_id: uuid.UUID,
    doing: str,
    decide: Callable[[psycopg.Connection[Any], WorkflowStatus, WorkflowRow], T],
    state: WorkflowState,
    act: Callable[[psycopg.Connection[Any], T], None],
) -> T:
    """``decide`` (first transaction: the workflow row locked, its summary read; it writes the
    new state or raises), then ``act`` on the steps (second transaction: the steps' task rows
    locked, then the workflow row; skipped if the state is no longer ``state``)."""
    what = f"{doing} workflow {workflow_id}"

    def first(c: psycopg.Connection[Any]) -> T:
        if c.execute(q("lock_workflow"), {"id": workflow_id}).fetchone() is None:
            raise WorkflowNotFound(f"workflow {workflow_id} does not exist in this database/schema")
        with c.cursor(row_factory=dict_row) as cur:
            found = cur.execute(q("get_workflow"), {"id": workflow_id}).fetchone()
            tasks = cur.execute(q("get_workflow_tasks"), {"id": workflow_id}).fetchall()
        assert found is not None
        row = WorkflowRow(**found)
        rows = [TaskRow(**(t | {"status": TaskStatus(t["status"])})) for t in tasks]
        status, _ = summarize(row.state, step_states(len(row.steps), rows))
        return decide(c, status, row)

    def second(c: psycopg.Connection[Any]) -> None:
        c.execute(q("lock_workflow_steps"), {"id": workflow_id})
        found = c.execute(q("lock_workflow"), {"id": workflow_id}).fetchone()
        if found is not None and found[0] == state:  # (else another change came in between)
            act(c, decided)

    decided = _in_transaction(store, first, what)
    _in_transaction(store, second, what)
    return decided


def _in_transaction(store: Store, work: Callable[[psycopg.Connection[Any]], T], what: str) -> T:
    """``work`` in a transaction of its own; a deadlock the database broke is tried again."""
    for attempt in range(_RETRIES):
        try:
            with store.pool().connection() as c:
                with c.transaction():
                    return work(c)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == _RETRIES - 1:
                raise _translate(exc, what) from exc
            time.sleep(0.01 * (attempt + 1))
        except psycopg.Error as exc:
            raise _translate(exc, what) from exc
    raise AssertionError("unreachable")
