"""The context of the task attempt running in this process, read with `get_hyrex_context()`."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable

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


class _LazyContext:
    """A context built on first use: most tasks never ask for theirs, and building the model
    for every attempt was a measurable share of an executor's time per tiny task."""

    __slots__ = ("_make", "_ctx")

    def __init__(self, make: Callable[[], HyrexContext]) -> None:
        self._make = make
        self._ctx: HyrexContext | None = None

    def get(self) -> HyrexContext:
        if self._ctx is None:
            self._ctx = self._make()
        return self._ctx


_Current = HyrexContext | _LazyContext | None
_current: contextvars.ContextVar[_Current] = contextvars.ContextVar(
    "hyrex_like_context", default=None
)


def get_hyrex_context() -> HyrexContext | None:
    """Return the context of the running task attempt, or ``None`` outside a task."""
    value = _current.get()
    if isinstance(value, _LazyContext):
        return value.get()
    return value


def _set_context(ctx: _Current) -> contextvars.Token[_Current]:
    return _current.set(ctx)


def _reset_context(token: contextvars.Token[_Current]) -> None:
    _current.reset(token)
