"""Helpers for applications' own tests: run a task the way a worker would, inspect what was sent.

from hyrex_like.testing import run_task, sent_tasks

def test_process_file():
    assert run_task(process_file, {"file_path": "/x", "options": {}})["status"] == "completed"

def test_signup_sends_welcome_email(hy):
    signup("ann@example.com")
    [task] = sent_tasks(hy, "send_welcome_email")
    assert task.args == {"email": "ann@example.com"}
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .context import HyrexContext, _reset_context, _set_context
from .observer import RecordingObserver
from .registry import HyrexRegistry
from .states import TaskStatus
from .task import TaskDefinition, TaskSender


@dataclass(frozen=True)
class SentTask:
    """A task row as sent (for assertions)."""

    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    status: TaskStatus
    args: Any
    attempt_count: int
    created_at: datetime


def run_task(
    task: TaskDefinition[Any, Any] | TaskSender[Any, Any],
    payload: Any = None,
    *,
    attempt_number: int = 1,
    parent_id: uuid.UUID | None = None,
    scheduled_for: datetime | None = None,
) -> Any:
    """Run ``task`` in this process exactly as a worker would, and return its JSON result.

    The payload goes through the same JSON round trip as a sent task, the task context is set,
    ``async def`` tasks run to completion, and the return value must be storable as JSON.
    Exceptions propagate (``on_error`` is not called). ``scheduled_for`` (a timezone-aware
    datetime) runs it as a schedule would for that tick: the context's ``scheduled_for``, in
    UTC; without it the task runs as sent by hand (None).
    """
    if scheduled_for is not None:
        if scheduled_for.utcoffset() is None:
            raise ValueError(
                f"run_task(scheduled_for={scheduled_for!r}): the tick time must be "
                "timezone-aware (as a schedule's ticks are), e.g. datetime(..., tzinfo=UTC)"
            )
        scheduled_for = scheduled_for.astimezone(UTC)
    definition = task.definition  # a definition sends as itself, with its own config
    config = task.config
    args_json = definition.dump_payload(payload) if definition.param_name else "null"
    value = definition.load_payload(args_json)
    ctx = HyrexContext(
        task_id=uuid.uuid4(),
        task_name=definition.name,
        attempt_number=attempt_number,
        max_retries=config.max_retries,
        queue=config.queue,
        priority=config.priority,
        parent_id=parent_id,
        root_id=parent_id,
        scheduled_for=scheduled_for,
    )
    token = _set_context(ctx)
    try:
        outcome = definition.call(value)
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
    finally:
        _reset_context(token)
    return json.loads(definition.dump_result(outcome))


def sent_tasks(
    registry: HyrexRegistry,
    task_name: str | None = None,
    *,
    status: TaskStatus | str | None = None,
    limit: int = 1000,
) -> list[SentTask]:
    """Tasks in the registry's database, oldest first, optionally by name and status."""
    rows = registry.store.execute(
        "list_tasks", {"task_name": task_name, "status": status, "limit": limit}
    )
    return [
        SentTask(tid, name, queue, prio, TaskStatus(state), args, attempts, created)
        for tid, name, queue, prio, state, args, attempts, created in rows
    ]


__all__ = ["RecordingObserver", "SentTask", "run_task", "sent_tasks"]
