"""The context of the task attempt running in this process, read with `get_hyrex_context()`.

Inside a worker it describes the attempt. In a direct call of a task (``process_file(ctx)``,
handy in tests) it is a local context: ``is_local`` is True, the id is fresh and stored
nowhere, the attempt is 1 and queue, priority and retries come from the task's config.
Anywhere else there is no context: `get_hyrex_context()` raises `NoTaskContext`, and
``get_hyrex_context(default=None)`` returns None.

A task reports how far it got with ``get_hyrex_context().update_progress({...})``; see
`HyrexContext.update_progress`.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .errors import NoTaskContext, PayloadTooLarge
from .payloads import checked_json

T = TypeVar("T")

MAX_PROGRESS_BYTES = 65_536
"""The largest progress value `HyrexContext.update_progress` takes, as JSON: progress is a
small status ({'done': 2873, 'total': 100000}), written again every half second."""


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

    _progress: Any = PrivateAttr(default=None)
    _progress_n: int = PrivateAttr(default=0)  # how many values were reported

    @property
    def progress(self) -> Any:
        """The value last given to `update_progress` in this attempt (None: none yet)."""
        return self._progress

    def update_progress(self, value: Any) -> None:
        """Report how far this attempt got: any JSON value, e.g. ``{'done': 2873, 'total':
        100000}``; readable as ``handle.progress`` (and on a workflow's current step).

        Works in sync and async tasks (and threads they start) and costs next to nothing, so
        it can run in a tight loop: it only keeps the value here. The worker's executor looks
        for a new value every 0.1 s while the attempt runs and the worker writes the latest at
        most every half second (a reader sees it within about a second); the last value goes
        with the attempt's outcome, so a task that reads completed shows it. It never waits for
        the database, and a value reported by an attempt never covers a later attempt's.

        The value must be storable as JSON as a result must (no NaN or Infinity, no NUL
        character, no lone surrogate, nesting within MAX_NESTING_DEPTH) and at most
        `MAX_PROGRESS_BYTES` as JSON. It is checked when the worker takes it, not here: an
        attempt that ends with a value JSON cannot hold fails (`PayloadNotSerializable` or
        `PayloadTooLarge`, naming the task), as if it had returned such a result.

        In a direct call of the task (``is_local``) the value is checked at once and kept
        here, as `progress`: nothing is written.
        """
        if self.__dict__["is_local"]:  # a direct call (a test) checks the value at once
            _progress_json(self.task_name, value)
        private = self.__pydantic_private__  # (plain writes: this may run in a tight loop)
        private["_progress"] = value  # type: ignore[index]
        private["_progress_n"] += 1  # type: ignore[index]


def _progress_json(task_name: str, value: Any) -> str:
    """``value`` as JSON text, checked as results are (`payloads.checked_json`), and at most
    `MAX_PROGRESS_BYTES`."""
    data = checked_json(value, None, f"task {task_name} reported progress")
    if len(data) > MAX_PROGRESS_BYTES:
        raise PayloadTooLarge(
            f"task {task_name} reported progress of {len(data)} bytes as JSON; the limit is "
            f"{MAX_PROGRESS_BYTES} (MAX_PROGRESS_BYTES): report a small status, not data"
        )
    return data.decode("utf-8")


_FIELDS = frozenset(HyrexContext.model_fields)


def _built(values: dict[str, Any]) -> HyrexContext:
    """What ``HyrexContext.model_construct(**values)`` returns, given every field, for a
    fraction of its cost (the worker builds one per attempt whose task asks for it)."""
    assert values.keys() == _FIELDS
    ctx = object.__new__(HyrexContext)
    object.__setattr__(ctx, "__dict__", values)
    object.__setattr__(ctx, "__pydantic_fields_set__", set(values))
    object.__setattr__(ctx, "__pydantic_extra__", None)
    object.__setattr__(ctx, "__pydantic_private__", {"_progress": None, "_progress_n": 0})
    return ctx


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
