"""What a send gives back: `TaskHandle` (status, result, attempts) and `TaskRun` (one attempt)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .db import RunRow, Store, TaskRow
from .errors import KeyInUse, TaskNotCompleted, TaskNotFound, TaskWaitTimeout, WorkflowStateError
from .states import TASK_FINAL, TASK_RETRY_BY_HAND, RunStatus, TaskStatus
from .task_config import _UNSET

R = TypeVar("R")


class TaskError(TypedDict):
    """A failed attempt, in one shape for ``handle.last_error`` and ``run.error``."""

    type: str
    """The exception's class name (or ``TaskTimeout``, ``ExecutorLost``, ``WorkerLost``)."""
    message: str | None
    attempt: int
    """The attempt number that failed."""


class TaskRun(BaseModel):
    """One attempt of a task, as recorded by the worker that ran it."""

    model_config = ConfigDict(frozen=True)

    attempt_number: int
    status: RunStatus
    worker_id: uuid.UUID | None
    claimed_at: datetime | None
    """When a worker claimed this attempt (None for runs recorded before schema version 4)."""
    started_at: datetime | None
    """When the body began, as its worker saw it; None if it never did (or the worker has not
    said so yet: a worker reports a start once the body has run a little while)."""
    finished_at: datetime | None
    result: Any = None
    """The attempt's result as stored (JSON); ``handle.result`` is the typed one."""
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None

    @property
    def error(self) -> TaskError | None:
        """The attempt's error (type, message, attempt), shaped as ``handle.last_error``."""
        if self.error_type is None:
            return None
        return TaskError(
            type=self.error_type, message=self.error_message, attempt=self.attempt_number
        )

    @classmethod
    def _from_row(cls, row: RunRow) -> TaskRun:
        return cls(
            attempt_number=row.attempt_number,
            status=row.status,
            worker_id=row.worker_id,
            claimed_at=row.claimed_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            result=row.result,
            error_type=row.error_type,
            error_message=row.error_message,
            traceback=row.traceback,
        )


class TaskHandle(Generic[R]):
    """A sent task: its id at once, its status and attempts after `refresh()` or `wait()`."""

    def __init__(
        self,
        task_id: uuid.UUID,
        task_name: str,
        store: Store,
        result_adapter: TypeAdapter[Any] | None = None,
    ) -> None:
        self.id = task_id
        self.task_name = task_name
        self._store = store
        self._result_adapter = result_adapter
        self._row: TaskRow | None = None
        self._runs: list[TaskRun] = []
        self._result: Any = _UNSET
        self.deduplicated = False
        """True when a send with an idempotency key found a live task holding the key: this
        handle is that task's, and the send wrote nothing."""

    def __repr__(self) -> str:
        # Unread, a handle comes from a send, which wrote the task queued.
        status = self._row.status if self._row else TaskStatus.QUEUED
        return f"<TaskHandle {self._label()} {status}>"

    def _label(self) -> str:
        return f"{self.task_name} {self.id}" if self.task_name else f"{self.id}"

    def refresh(self) -> TaskHandle[R]:
        """Reload the task row and its runs from the database."""
        row, runs = self._store.get_task(self.id)
        if row is None:
            raise TaskNotFound(f"task {self._label()} does not exist in this database/schema")
        self._row = row
        self.task_name = row.task_name
        self._runs = [TaskRun._from_row(r) for r in runs]
        self._result = _UNSET
        return self

    def _loaded(self) -> TaskRow:
        if self._row is None:
            self.refresh()
        assert self._row is not None
        return self._row

    @property
    def status(self) -> TaskStatus:
        """Status as of the last refresh: queued, running, completed, failed or canceled."""
        return self._loaded().status

    @property
    def result(self) -> R:
        """What the task returned, as its return annotation's type (a Pydantic model comes
        back as the model) when the task is registered here; else the stored JSON.

        Raises `TaskNotCompleted` unless the task completed (as of the last refresh): while it
        is queued or running (call `wait()`), and when it failed or was canceled (its errors
        are in `last_error` and `task_runs`). The stored JSON is ``handle.row.result``.
        """
        row = self._loaded()
        if row.status != TaskStatus.COMPLETED:
            raise TaskNotCompleted(self._no_result_message(row), status=row.status)
        if self._result is _UNSET:
            self._result = self._rebuild(row.result)
        value: R = self._result
        return value

    def _rebuild(self, stored: Any) -> Any:
        if self._result_adapter is None:
            return stored
        try:
            return self._result_adapter.validate_python(stored)
        except pydantic.ValidationError as exc:
            exc.add_note(
                f"the stored result of task {self._label()} does not match the task's return "
                "annotation (did the task change since?); handle.row.result holds the JSON"
            )
            raise

    def _no_result_message(self, row: TaskRow) -> str:
        if row.status in TASK_FINAL:
            error = self.last_error
            detail = f"; last error {error['type']}: {error['message']}" if error else ""
            return (
                f"task {self._label()} {row.status} after {row.attempt_count} attempt(s), so "
                f"it has no result{detail} (see handle.last_error and handle.task_runs)"
            )
        return (
            f"task {self._label()} is {row.status} and has no result yet: call handle.wait() "
            "(or refresh()) first"
        )

    @property
    def last_error(self) -> TaskError | None:
        """The error of the latest failed attempt while the task has not completed; None once
        it completed (every attempt's error stays in `task_runs`)."""
        row = self._loaded()
        if row.status == TaskStatus.COMPLETED or row.last_error is None:
            return None
        stored = row.last_error
        return TaskError(type=stored["type"], message=stored["message"], attempt=stored["attempt"])

    @property
    def progress(self) -> Any:
        """What the task last reported with ``get_hyrex_context().update_progress(...)``, as
        stored JSON (dicts, lists, numbers...), as of the last refresh; None if it reported
        nothing. The worker writes it at most every half second, so it may lag the task by
        about a second; the last value an attempt reported stays after it ends."""
        return self._loaded().progress

    @property
    def attempt_count(self) -> int:
        return self._loaded().attempt_count

    @property
    def queue(self) -> str:
        return self._loaded().queue

    @property
    def priority(self) -> int:
        return self._loaded().priority

    @property
    def parent_id(self) -> uuid.UUID | None:
        return self._loaded().parent_id

    @property
    def root_id(self) -> uuid.UUID | None:
        return self._loaded().root_id

    @property
    def run_after(self) -> datetime | None:
        """When a queued task becomes due (a delayed send, or a retry waiting out its backoff),
        as of the last refresh; None unless the task is queued."""
        row = self._loaded()
        return row.run_after if row.status == TaskStatus.QUEUED else None

    def cancel(self, *, children: bool = False) -> bool:
        """Cancel the task: a queued one (delayed, or waiting for a retry, too) becomes
        canceled and never runs; a running one is stopped by its worker within about a second
        and ends canceled (its run too), never retried. With ``children``, the unfinished
        tasks sent from it (at any depth) are canceled too.

        True when the task was canceled or its stop requested; False when it had already
        finished (nothing changes). Raises `TaskNotFound` if no such task exists. The handle
        is refreshed.
        """
        return _cancel(self._store, self.id, children, self)

    def retry(self) -> bool:
        """Queue a failed or canceled task again, with a fresh retry budget (its attempt
        numbers go on; its runs stay). False if it is not failed or canceled (nothing
        changes). Raises `KeyInUse` if its idempotency key is now held by another live task,
        and `WorkflowStateError` for a step of a workflow that is paused or over (resume the
        workflow instead).
        The handle is refreshed."""
        try:
            done = self._store.retry(self.id)
        except KeyInUse:
            raise KeyInUse(self._key_in_use_message()) from None
        row = self.refresh().row
        if not done and row.workflow_id is not None and row.status in TASK_RETRY_BY_HAND:
            raise WorkflowStateError(
                f"task {self._label()} is a step of workflow {row.workflow_id}, which is paused "
                "or over: resume the workflow (run.resume()) rather than retry its step"
            )
        return done

    def _key_in_use_message(self) -> str:
        """Why a retry was refused, naming the key and the task that holds it now."""
        row = self.refresh().row
        key = row.idempotency_key
        holders = self._store.execute("find_live_keys", {"task_name": row.task_name, "keys": [key]})
        holder = f"task {holders[0][1]}" if holders else "another live task"
        return (
            f"task {self._label()} cannot be retried: its idempotency key {key!r} is held by "
            f"{holder} (sent after this one failed or was canceled); cancel that one first, or "
            "send anew"
        )

    @property
    def row(self) -> TaskRow:
        """The whole task row as of the last refresh."""
        return self._loaded()

    @property
    def task_runs(self) -> list[TaskRun]:
        """Every attempt so far, oldest first, as of the last refresh."""
        self._loaded()
        return list(self._runs)

    @property
    def done(self) -> bool:
        return self._loaded().status in TASK_FINAL

    def wait(self, timeout: float | None = 60.0, poll_interval: float = 0.05) -> TaskHandle[R]:
        """Refresh until the task is completed, failed or canceled; raise TaskWaitTimeout."""
        if not poll_until(lambda: self.refresh().done, timeout, poll_interval):
            raise TaskWaitTimeout(f"task {self._label()} is still {self.status} after {timeout}s")
        return self


def poll_until(done: Callable[[], bool], timeout: float | None, poll_interval: float) -> bool:
    """Call ``done`` (which re-reads) until it says True (True), or ``timeout`` seconds have
    passed (False), waiting ``poll_interval`` at first, then longer, at most 1 s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = poll_interval
    while True:
        if done():
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _cancel(store: Store, task_id: uuid.UUID, children: bool, handle: TaskHandle[Any]) -> bool:
    """`TaskHandle.cancel` (and ``hy.cancel``): True if ``task_id`` itself changed."""
    changed = store.cancel(task_id, children)
    handle.refresh()  # raises TaskNotFound for an unknown id
    return any(found == task_id for found, _ in changed)
