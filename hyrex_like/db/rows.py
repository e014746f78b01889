"""The rows: tasks and runs as read back, a task to insert, and the worker's claimed and
finished rows, with the array literals that carry a batch of them as text."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from ..states import RunStatus, TaskStatus


@dataclass(frozen=True)
class TaskRow:
    """A ``task`` row as read back."""

    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    status: TaskStatus
    args: Any
    max_retries: int
    timeout_seconds: float | None
    backoff_seconds: list[float]
    attempt_count: int
    failure_count: int
    run_after: datetime
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None
    worker_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    last_error: dict[str, Any] | None
    idempotency_key: str | None = None
    cancel_requested_at: datetime | None = None  # a cancel of the running task was asked for
    scheduled_for: datetime | None = None  # the tick time of a task made by a schedule
    workflow_id: uuid.UUID | None = None  # the workflow this task is a step of
    workflow_step: int | None = None  # its step's index in that workflow
    pause_requested_at: datetime | None = None  # its workflow was paused while it ran
    progress: Any = None  # what it last reported with update_progress (None: nothing yet)


@dataclass(frozen=True)
class RunRow:
    """A ``task_run`` row as read back."""

    task_id: uuid.UUID
    attempt_number: int
    status: RunStatus
    worker_id: uuid.UUID | None
    claimed_at: datetime | None  # None: written before schema version 4
    started_at: datetime | None  # when the body began; None: it never did (or not yet known)
    finished_at: datetime | None
    result: Any
    error_type: str | None
    error_message: str | None
    traceback: str | None


@dataclass(slots=True)
class NewTask:
    """Everything needed to insert one task row."""

    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    args_json: str
    max_retries: int
    timeout_seconds: float | None
    backoff_seconds: list[float]
    run_after: datetime | None
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None
    idempotency_key: str | None = None  # sent once per key (``insert_task_once``)

    def params(self) -> dict[str, Any]:
        """Parameters of ``insert_task`` (and, with ``idempotency_key``, of
        ``insert_task_once``): text the statement casts (cheap to adapt)."""
        return {
            "id": str(self.id),
            "task_name": self.task_name,
            "queue": self.queue,
            "priority": self.priority,
            "args": self.args_json,
            "max_retries": self.max_retries,
            "timeout_seconds": self.timeout_seconds,
            "backoff_seconds": _array_literal(map(repr, self.backoff_seconds)),
            "run_after": self.run_after.isoformat() if self.run_after is not None else None,
            "parent_id": str(self.parent_id) if self.parent_id is not None else None,
            "root_id": str(self.root_id) if self.root_id is not None else None,
            "idempotency_key": self.idempotency_key,
        }

    def copy_row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.task_name,
            self.queue,
            self.priority,
            self.args_json,
            self.max_retries,
            self.timeout_seconds,
            self.backoff_seconds,
            self.run_after.isoformat() if self.run_after is not None else "now",
            self.parent_id,
            self.root_id,
        )


@dataclass(slots=True)
class ClaimedRow:
    """A claimed attempt, as `claim_tasks` returns it (in its column order). The worker's
    `Job` is this row with its wire form for the executor pipe."""

    task_id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    args: str  # the payload's JSON text
    attempt: int
    max_retries: int
    timeout: float | None
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None
    scheduled_for: datetime | None = None  # the tick time of a task made by a schedule


class FinishedRow(NamedTuple):
    """The outcome of one attempt, to be written by `finish_runs`."""

    task_id: uuid.UUID
    task_name: str
    attempt: int
    status: RunStatus  # a final one: RUN_FINAL
    retryable: bool
    result: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    started_at: float | None  # epoch seconds, as measured in the executor
    finished_at: float
    progress: str | None = None  # the attempt's last update_progress value (JSON), if any
    queue: str = ""  # the task's queue (the worker's minute tallies count by queue)


def _array_literal(elements: Iterable[str]) -> str:
    """A PostgreSQL array literal of elements that need no quoting (numbers, UUIDs, words)."""
    return "{" + ",".join(elements) + "}"


def _array_text(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of text elements (cast in SQL to the element type).

    Every element is quoted, so only backslash and double quote need escaping; None is NULL.
    PostgreSQL text cannot hold NUL: one is stored as the four characters \\x00. A lone
    surrogate (an exception message may hold one) cannot be encoded: it becomes "?".
    """
    out = []
    for value in values:
        if value is None:
            out.append("NULL")
            continue
        if not value.isascii():
            value = value.encode("utf-8", "replace").decode("utf-8")
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        out.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return _array_literal(out)
