"""The context of the task attempt running in this process, read with `get_hyrex_context()`.

Inside a worker it describes the attempt. In a direct call of a task (``process_file(ctx)``,
handy in tests) it is a local context: ``is_local`` is True, the id is fresh and stored
nowhere, the attempt is 1 and queue, priority and retries come from the task's config.
Anywhere else there is no context: `get_hyrex_context()` raises `NoTaskContext`, and
``get_hyrex_context(default=None)`` returns None.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar, overload

from pydantic import BaseModel, ConfigDict

from .errors import NoTaskContext

T = TypeVar("T")


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
    is_local: bool = False
    """True in a direct call of the task: no row, no worker; ``task_id`` is made up, and
    ``parent_id``/``root_id`` are those a task sent from here records (the enclosing task's)."""
    scheduled_for: datetime | None = None
    """The tick this attempt runs for, a timezone-aware UTC datetime, when a schedule made the
    task (``@hy.task(schedule=...)``): the tick's time, not when the task was created or
    started, so a body can tell which period it covers even when it runs late or is retried.
    Every attempt of the task sees the same value. None for tasks sent any other way and for
    direct calls."""


class _LazyContext:
    """A context built on first use: most tasks never ask for theirs, and building the model
    per attempt costs an executor time on tiny tasks."""

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
_NO_DEFAULT: object = object()


@overload
def get_hyrex_context() -> HyrexContext: ...
@overload
def get_hyrex_context(default: T) -> HyrexContext | T: ...
def get_hyrex_context(default: object = _NO_DEFAULT) -> object:
    """The context of the running task attempt (or of a direct call of a task).

    Outside any task: raises `NoTaskContext`, or returns ``default`` if one is given
    (``get_hyrex_context(default=None)`` for code that runs both inside and outside tasks).
    """
    value = _current.get()
    if isinstance(value, _LazyContext):
        return value.get()
    if value is None:
        if default is _NO_DEFAULT:
            raise NoTaskContext(
                "get_hyrex_context() was called outside a task: it works in a task run by a "
                "worker or called directly (process_file(ctx)); use "
                "get_hyrex_context(default=None) in code that also runs outside tasks"
            )
        return default
    return value


def lineage(ctx: HyrexContext | None) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """``(parent_id, root_id)`` for a task sent under ``ctx``: the running task, or for a direct
    call the task that call runs in (a local id is stored nowhere, so it is never a parent)."""
    if ctx is None:
        return None, None
    if ctx.is_local:
        return ctx.parent_id, ctx.root_id
    return ctx.task_id, ctx.root_id or ctx.task_id


def _current_context() -> HyrexContext | None:
    """The current context or None (the registry's own use: a send records its parent)."""
    value = _current.get()
    if isinstance(value, _LazyContext):
        return value.get()
    return value


def _raw_context() -> _Current:
    """The current value as set, a lazy one still unbuilt (cheap to capture)."""
    return _current.get()


def _resolve(value: _Current) -> HyrexContext | None:
    return value.get() if isinstance(value, _LazyContext) else value


def _set_context(ctx: _Current) -> contextvars.Token[_Current]:
    return _current.set(ctx)


def _reset_context(token: contextvars.Token[_Current]) -> None:
    _current.reset(token)
