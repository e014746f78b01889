"""The context of the task attempt running in this process, read with `get_hyrex_context()`."""

from __future__ import annotations

import contextvars
import uuid

from pydantic import BaseModel, ConfigDict


class HyrexContext(BaseModel):
    """What a running task knows about itself. Immutable."""

    model_config = ConfigDict(frozen=True)

    task_id: uuid.UUID
    task_name: str
    attempt_number: int
    max_retries: int
    queue: str
    priority: int
    parent_id: uuid.UUID | None = None
    root_id: uuid.UUID | None = None
    worker_id: uuid.UUID | None = None


_current: contextvars.ContextVar[HyrexContext | None] = contextvars.ContextVar(
    "hyrex_like_context", default=None
)


def get_hyrex_context() -> HyrexContext | None:
    """Return the context of the running task attempt, or ``None`` outside a task."""
    return _current.get()


def _set_context(ctx: HyrexContext | None) -> contextvars.Token[HyrexContext | None]:
    return _current.set(ctx)


def _reset_context(token: contextvars.Token[HyrexContext | None]) -> None:
    _current.reset(token)
