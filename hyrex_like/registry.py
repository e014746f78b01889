"""Task definitions: `HyrexRegistry`, `@hy.task`, decoration-time checks, `send`/`with_config`.

The registry never imports the dispatcher; the dispatcher consumes registries.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Never, Protocol, TypedDict, TypeVar, overload

import psycopg
import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic_core import SchemaSerializer

from .config import Settings
from .context import (
    HyrexContext,
    _current_context,
    _LazyContext,
    _raw_context,
    _reset_context,
    _resolve,
    _set_context,
    lineage,
)
from .errors import (
    ConfigurationError,
    DuplicateTaskName,
    InvalidTaskId,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    TaskDefinitionError,
    TaskNotCompleted,
    TaskNotFound,
    TaskWaitTimeout,
)
from .states import TASK_FINAL, RunStatus, TaskStatus
from .store import NewTask, RunRow, Store, TaskRow, new_task_id, new_task_ids

T = TypeVar("T")
R = TypeVar("R")

_NAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# An escaped NUL in JSON text (an even number of backslashes before it means it is literal).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# NaN, Infinity or -Infinity where our compact dumps put a value: not inside a string, mostly.
_JSON_NON_FINITE = re.compile(rb"(?:\A|[:\[,])-?(?:NaN|Infinity)")

MAX_NESTING_DEPTH = 201
"""The deepest level a value may sit at in a payload or a result, counted as pydantic's JSON
parser (which loads payloads in the worker) counts: the whole payload is level 1 and the items
of an array or object one level below it. So a number or a string may sit inside at most 200
arrays/objects, and so may an empty ``[]`` or ``{}`` (a value itself, making 201 levels of
brackets). The parser refuses anything deeper, and so does a send (and a worker
storing a result, by the same check): every task sent can be loaded."""

_FFFD = "\ufffd".encode()  # what pydantic writes for a lone surrogate in a dict key
_ANY_SERIALIZER = SchemaSerializer(pydantic_core.core_schema.any_schema())


def check_name(kind: str, value: object) -> str:
    """Validate a task or queue name: 1-255 characters, no control characters (e.g. NUL)."""
    if not isinstance(value, str):
        raise InvalidTaskOption(f"{kind} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidTaskOption(f"{kind} must not be empty")
    if len(value) > _NAME_MAX:
        raise InvalidTaskOption(f"{kind} is {len(value)} characters long; the limit is {_NAME_MAX}")
    if _CONTROL.search(value):
        raise InvalidTaskOption(f"{kind} {value!r} contains a control character (such as NUL)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTaskOption(
            f"{kind} {value!r} is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    return value


def default_backoff(retry: int) -> float:
    """Exponential: 1 s, 2 s, 4 s, ... capped at 5 minutes."""
    return float(min(2 ** (retry - 1), 300))


class TaskConfig(BaseModel):
    """The options of a task; set by `@hy.task(...)`, overridden by `with_config(...)`."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    queue: str = "default"
    priority: int = Field(default=5, ge=1, le=10)
    max_retries: int = Field(default=0, ge=0, le=10_000)
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    retry_backoff: float | Callable[[int], float] | None = None
    on_error: Callable[[Exception], Any] | None = None

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        return check_name("queue", value)

    @field_validator("priority", "max_retries", mode="before")
    @classmethod
    def _strict_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value

    @field_validator("retry_backoff")
    @classmethod
    def _backoff(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not callable(value):
            if isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"must be a finite number of seconds >= 0, got {value!r}")
        return value

    def backoff_schedule(self) -> list[float]:
        """One delay (seconds) per retry, evaluated now: a callable is called with 1, 2, ..."""
        delays: list[float] = []
        for retry in range(1, self.max_retries + 1):
            backoff = self.retry_backoff
            if backoff is None:
                delay: Any = default_backoff(retry)
            elif callable(backoff):
                try:
                    delay = backoff(retry)
                except Exception as exc:
                    raise InvalidTaskOption(
                        f"retry_backoff({retry}) raised {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                delay = backoff
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise InvalidTaskOption(
                    f"retry_backoff({retry}) returned {delay!r}; it must return seconds as a number"
                )
            if not math.isfinite(delay) or delay < 0:
                raise InvalidTaskOption(f"retry_backoff({retry}) returned {delay!r}; must be >= 0")
            delays.append(float(delay))
        return delays


def _config(owner: str, base: TaskConfig | None, options: dict[str, Any]) -> TaskConfig:
    """Validate options into a TaskConfig, with an error naming the owner and the option."""
    given = {k: v for k, v in options.items() if v is not _UNSET}
    try:
        if base is None:
            return TaskConfig(**given)
        return TaskConfig(**(base.model_dump() | given))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'option'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidTaskOption(f"invalid option for task {owner}: {problems}") from None
    except InvalidTaskOption as exc:
        raise InvalidTaskOption(f"invalid option for task {owner}: {exc}") from None


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


# ------------------------------------------------------------------------------ handles


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
    started_at: datetime
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
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            self.refresh()
            if self.done:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskWaitTimeout(
                    f"task {self._label()} is still {self.status} after {timeout}s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


# ------------------------------------------------------------------------------ tasks


class TaskSender(Generic[T, R]):
    """Sends a task with a given config; `TaskDefinition.with_config` returns one."""

    def __init__(self, definition: TaskDefinition[T, R], config: TaskConfig) -> None:
        self.definition = definition
        self.config = config

    def with_config(
        self,
        *,
        queue: str = _UNSET,
        priority: int = _UNSET,
        max_retries: int = _UNSET,
        timeout_seconds: float | None = _UNSET,
        retry_backoff: float | Callable[[int], float] | None = _UNSET,
        on_error: Callable[[Exception], Any] | None = _UNSET,
    ) -> TaskSender[T, R]:
        """A sender with some options changed; the task's own config is untouched.

        ``on_error`` is accepted only to say clearly that it cannot change per send: the worker
        runs the ``on_error`` registered with the task.
        """
        if on_error is not _UNSET:
            raise InvalidTaskOption(
                f"invalid option for task {self.definition.name}: on_error cannot be changed with "
                "with_config(); the worker calls the on_error given to @hy.task"
            )
        options = dict(
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff=retry_backoff,
            on_error=on_error,
        )
        return TaskSender(self.definition, _config(self.definition.name, self.config, options))

    def _new_task(self, payload: Any, schedule: list[float]) -> NewTask:
        """`_new_tasks` for one payload, without the lists: `send`'s hot path."""
        args_json = self.definition.dump_payload(payload)
        return self._row(new_task_id(), args_json, schedule, _current_context())

    def _new_tasks(self, payloads: Iterable[Any], schedule: list[float]) -> list[NewTask]:
        """Validate every payload (raising before anything is written), then build the rows."""
        d = self.definition
        args = [d.dump_payload(p, item=i) for i, p in enumerate(payloads)]
        ctx = _current_context()
        return [
            self._row(task_id, args_json, schedule, ctx)
            for task_id, args_json in zip(new_task_ids(len(args)), args, strict=True)
        ]

    def _row(
        self, task_id: uuid.UUID, args_json: str, schedule: list[float], ctx: HyrexContext | None
    ) -> NewTask:
        """The row for one task; sent from inside a task, it records that task as its parent
        (from a direct call, the task that call runs in, if any: a local id is stored nowhere)."""
        c = self.config
        parent, root = lineage(ctx)
        return NewTask(
            task_id,
            self.definition.name,
            c.queue,
            c.priority,
            args_json,
            c.max_retries,
            c.timeout_seconds,
            schedule,
            None,
            parent,
            root,
        )

    def _handle(self, task: NewTask) -> TaskHandle[R]:
        d = self.definition
        return TaskHandle(task.id, task.task_name, d.registry.store, d.result_adapter)

    def send(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.Connection[Any] | None = None,
        **fields: Never,
    ) -> TaskHandle[R]:
        """Validate ``payload`` and write one task row; with ``conn``, inside its transaction.

        Without ``conn``, a send whose pooled connection turns out dead (a database restart)
        is tried once more on a fresh one; the task id, chosen here, keeps it to one row.
        """
        if fields:
            raise TypeError(self.definition._keywords_message("send", fields))
        new = self._new_task(payload, self.config.backoff_schedule())
        self.definition.registry.store.insert_task(new, conn)
        return self._handle(new)

    async def asend(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **fields: Never,
    ) -> TaskHandle[R]:
        """Async twin of `send`, for async web handlers."""
        if fields:
            raise TypeError(self.definition._keywords_message("asend", fields))
        new = self._new_task(payload, self.config.backoff_schedule())
        await self.definition.registry.store.ainsert_task(new, conn)
        return self._handle(new)

    def send_many(
        self,
        payloads: Iterable[T | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[TaskHandle[R]]:
        """Validate every payload, then write all rows in one COPY (all or none)."""
        tasks = self._new_tasks(payloads, self.config.backoff_schedule())
        self.definition.registry.store.insert_tasks(tasks, conn)
        return [self._handle(t) for t in tasks]


class TaskDefinition(TaskSender[T, R]):
    """A registered task. Calling it runs the function in-process; `send` enqueues it."""

    def __init__(
        self,
        registry: HyrexRegistry,
        fn: Callable[..., Any],
        name: str,
        config: TaskConfig,
        param_name: str | None,
        payload_adapter: TypeAdapter[Any] | None,
        result_adapter: TypeAdapter[Any] | None,
        payload_annotation: Any = None,
    ) -> None:
        self.registry = registry
        self.fn = fn
        self.name = name
        self.param_name = param_name
        self.payload_adapter = payload_adapter
        self.result_adapter = result_adapter
        self.payload_annotation = payload_annotation
        # The adapters' serializers, except that NaN and Infinity come out as JSON constants,
        # which the dump then refuses, instead of a silent null.
        self._payload_serializer = _json_serializer(payload_adapter) if payload_adapter else None
        self._result_serializer = _json_serializer(result_adapter) if result_adapter else None
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn
        super().__init__(self, config)

    def __repr__(self) -> str:
        return f"<TaskDefinition {self.name} queue={self.config.queue!r}>"

    @overload
    def __call__(self: TaskDefinition[None, R]) -> R: ...
    @overload
    def __call__(self, payload: T) -> R: ...
    def __call__(self, payload: Any = _UNSET, **fields: Never) -> Any:
        """Run the function here and now, like a plain call (no database involved).

        `get_hyrex_context()` works inside: it returns a local context (``is_local``, a fresh
        id, attempt 1, the task's queue, priority and retries).
        """
        if fields:
            raise TypeError(self._keywords_message(None, fields))
        if self.param_name is None:
            if payload is not _UNSET:
                raise TypeError(f"task {self.name} takes no payload, got {type(payload).__name__}")
            args: tuple[Any, ...] = ()
        elif payload is _UNSET:
            raise TypeError(f"task {self.name} needs a payload ({self.param_name})")
        else:
            args = (payload,)
        outer = _raw_context()
        local = _LazyContext(lambda: self._local_context(_resolve(outer)))
        if self.is_async:
            return self._call_async(local, args)
        token = _set_context(local)
        try:
            return self.fn(*args)
        finally:
            _reset_context(token)

    async def _call_async(self, local: _LazyContext, args: tuple[Any, ...]) -> Any:
        token = _set_context(local)  # set in the task that awaits the call, where it runs
        try:
            return await self.fn(*args)
        finally:
            _reset_context(token)

    def _local_context(self, outer: HyrexContext | None) -> HyrexContext:
        """The context of a direct call: nothing is stored, so the id is fresh and local, and
        a task sent from here records the enclosing task (if any) as its parent."""
        parent, root = lineage(outer)
        c = self.config
        return HyrexContext(
            task_id=new_task_id(),
            task_name=self.name,
            attempt_number=1,
            max_retries=c.max_retries,
            queue=c.queue,
            priority=c.priority,
            parent_id=parent,
            root_id=root,
            worker_id=None,
            is_local=True,
        )

    def _keywords_message(self, method: str | None, fields: Mapping[str, Any]) -> str:
        """`send(n=3)`: say that a task takes one payload, and show the call to write."""
        call = f"{self.__name__}.{method}" if method else self.__name__
        call = f"await {call}" if method == "asend" else call
        given = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        if self.param_name is None:
            return f"task {self.name} takes no payload (got {given}): write {call}()"
        as_dict = f"{call}({dict(fields)!r})"
        annotation = self.payload_annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            as_model = f"{call}({annotation.__name__}({given}))"
            suggestion = f"{as_model} or {as_dict}"
        else:
            suggestion = as_dict
        return (
            f"task {self.name} takes one payload, not keyword arguments (got {given}): "
            f"write {suggestion}"
        )

    # -- payload and result conversion (used by send and by the worker) -------------------

    def _payload_label(self, item: int | None) -> str:
        where = f" (item {item} of send_many)" if item is not None else ""
        return f"payload for task {self.name}{where}"

    def dump_payload(self, payload: Any, *, item: int | None = None) -> str:
        """Validate ``payload`` against the annotation and return its JSON text.

        Refuses, naming the task (and ``item``, its index in `send_many`), anything a worker
        could not load back as it was: see `_json_problem`.
        """
        serializer = self._payload_serializer
        if serializer is None:
            if payload is not _UNSET and payload is not None:
                raise TypeError(
                    f"task {self.name} takes no payload, got {type(payload).__name__}"
                    + (f" (item {item} of send_many)" if item is not None else "")
                )
            data = b"null"
        else:
            if payload is _UNSET:
                raise TypeError(f"task {self.name} needs a payload ({self.param_name})")
            assert self.payload_adapter is not None
            try:
                value = self.payload_adapter.validate_python(payload)
            except pydantic.ValidationError as exc:
                # ValidationError cannot be built anew; a note keeps its type for callers
                exc.add_note(f"{self._payload_label(item)} does not match its annotation")
                raise
            try:
                data = serializer.to_json(value)
            except (pydantic_core.PydanticSerializationError, ValueError) as exc:
                # valid for the annotation yet not JSON: e.g. an object inside Any, bad bytes
                why = _serialization_problem(exc, lambda: serializer.to_python(value))
                raise PayloadNotSerializable(
                    f"{self._payload_label(item)} cannot be stored as JSON: {why}"
                ) from None
            limit = self.registry.settings.max_payload_bytes
            if len(data) > limit:
                raise PayloadTooLarge(
                    f"{self._payload_label(item)} is {len(data)} bytes as JSON; the limit is "
                    f"{limit} (HYREX_LIKE_MAX_PAYLOAD_BYTES). Store large data elsewhere and "
                    "send a reference"
                )
            problem = _json_problem(data, lambda: serializer.to_python(value))
            if problem is not None:
                raise PayloadNotSerializable(
                    f"{self._payload_label(item)} cannot be stored as JSON: {problem}"
                )
        return data.decode("utf-8")

    def load_payload(self, args_json: str | bytes) -> Any:
        """Validate stored JSON args back into the annotated type, as the worker does."""
        if self.payload_adapter is None:
            return None
        return self.payload_adapter.validate_json(args_json)

    def dump_result(self, value: Any) -> str:
        """The return value as JSON text; raises PayloadNotSerializable if it cannot be
        stored as it is (the same rule as payloads: no NUL, NaN, Infinity, lone surrogate
        or nesting deeper than MAX_NESTING_DEPTH), typed or not."""
        serializer = self._result_serializer
        plain = serializer or _ANY_SERIALIZER
        try:
            if serializer is not None:
                data = serializer.to_json(value)
            else:
                data = pydantic_core.to_json(value, inf_nan_mode="constants")
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            why = _serialization_problem(exc, lambda: plain.to_python(value))
            raise PayloadNotSerializable(
                f"task {self.name} returned a value that cannot be stored as JSON "
                f"({type(value).__name__}): {why}"
            ) from None
        problem = _json_problem(data, lambda: plain.to_python(value))
        if problem is not None:
            raise PayloadNotSerializable(
                f"task {self.name} returned a value that cannot be stored as JSON: {problem}"
            )
        return data.decode("utf-8")

    def call(self, payload: Any) -> Any:
        """Call the function with a validated payload; returns a coroutine for async tasks."""
        if self.param_name is None:
            return self.fn()
        return self.fn(payload)


class AsyncTaskDefinition(TaskDefinition[T, R]):
    """A registered ``async def`` task: ``R`` is what it returns once awaited (the type of
    ``handle.result``), and a direct call returns the coroutine, as calling the function does.
    """

    @overload  # type: ignore[override]  # the call returns a coroutine of R, not R
    def __call__(self: AsyncTaskDefinition[None, R]) -> Coroutine[Any, Any, R]: ...
    @overload
    def __call__(self, payload: T) -> Coroutine[Any, Any, R]: ...
    def __call__(self, payload: Any = _UNSET, **fields: Never) -> Any:
        return super().__call__(payload, **fields)


# ------------------------------------------------------------------ what JSON can hold


class _Serializer(Protocol):
    """What `TaskDefinition` needs of a serializer (a `SchemaSerializer` is one)."""

    def to_json(self, value: Any) -> bytes: ...
    def to_python(self, value: Any) -> Any: ...


class _NonFinite(ValueError):
    """A NaN or an Infinity found by `_CheckedSerializer` (its message is the problem)."""


class _CheckedSerializer:
    """The adapter's own serializer (non-finite numbers come out as null, or as its models
    chose), plus a search for the numbers that became null: pydantic 2.11 and 2.12 build a
    model's prebuilt serializer into ours, which ignores our ``ser_json_inf_nan``, and have no
    public way to opt out. The search walks the value only when the JSON holds a null.

    (Imprecise in one corner: a model that chose ``ser_json_inf_nan="strings"`` is refused
    when its payload also holds a null somewhere.)"""

    def __init__(self, adapter: TypeAdapter[Any]) -> None:
        self._serializer = adapter.serializer

    def to_json(self, value: Any) -> bytes:
        data = self._serializer.to_json(value)
        if b"null" in data:
            found = _find(self._serializer.to_python(value), _non_finite, keys=False)
            if found is not None:
                raise _NonFinite(_non_finite_problem(*found))
        return data

    def to_python(self, value: Any) -> Any:
        return self._serializer.to_python(value)


def _prebuilt_opt_out() -> bool:
    """Whether `SchemaSerializer` takes ``_use_prebuilt`` (pydantic >= 2.13)."""
    try:
        SchemaSerializer(pydantic_core.core_schema.any_schema(), None, _use_prebuilt=False)
    except TypeError:
        return False
    return True


_PREBUILT_OPT_OUT = _prebuilt_opt_out()

_SERIALIZER_MODE: typing.Literal["auto", "schema", "checked"] = "auto"
"""How `_json_serializer` builds: "schema" (our own `SchemaSerializer`, the fast path),
"checked" (`_CheckedSerializer`), or "auto": "schema" where it writes NaN as NaN, found out
once (tests set this to force a path)."""


@functools.cache
def _schema_serializer_works() -> bool:
    """Whether a `SchemaSerializer` built from a model's schema honours our setting: true with
    ``_use_prebuilt=False`` (pydantic >= 2.13) and before prebuilt serializers (<= 2.10)."""

    class Inner(BaseModel):
        value: float

    class Probe(BaseModel):  # a model inside a model: only the inner one came prebuilt
        value: float
        inner: Inner

    value = Probe(value=math.nan, inner=Inner(value=math.nan))
    return _schema_serializer(TypeAdapter(Probe)).to_json(value).count(b"NaN") == 2


def _json_serializer(adapter: TypeAdapter[Any]) -> _Serializer:
    """The adapter's serializer, writing NaN and Infinity as JSON constants (not null), which
    `_json_problem` then refuses; or, where pydantic cannot (see `_CheckedSerializer`), one
    that refuses them itself."""
    mode = _SERIALIZER_MODE
    if mode == "auto":
        mode = "schema" if _schema_serializer_works() else "checked"
    if mode == "checked":
        return _CheckedSerializer(adapter)
    return _schema_serializer(adapter)


def _schema_serializer(adapter: TypeAdapter[Any]) -> SchemaSerializer:
    """The adapter's schema as a serializer with ``ser_json_inf_nan="constants"``.

    Models carry their own config in the schema, so each gets the setting too, unless it
    chose ``ser_json_inf_nan`` itself (then its choice stands: e.g. "strings" round-trips).
    """
    schema = _inf_nan_as_constants(adapter.core_schema)
    config: Any = {"ser_json_inf_nan": "constants"}
    if _PREBUILT_OPT_OUT:
        # Not the models' prebuilt serializers: those would ignore the setting.
        return SchemaSerializer(schema, config, _use_prebuilt=False)
    return SchemaSerializer(schema, config)


def _inf_nan_as_constants(node: Any) -> Any:
    """A copy of a core schema whose every config sets ``ser_json_inf_nan`` if unset."""
    if isinstance(node, dict):
        out = {key: _inf_nan_as_constants(value) for key, value in node.items()}
        if isinstance(out.get("config"), dict):
            out["config"] = {"ser_json_inf_nan": "constants", **out["config"]}
        return out
    if isinstance(node, list):
        return [_inf_nan_as_constants(value) for value in node]
    if isinstance(node, tuple):
        return tuple(_inf_nan_as_constants(value) for value in node)
    return node


def _serialization_problem(exc: Exception, plain: Callable[[], Any]) -> str:
    """The serializer's refusal, said in our terms where we can (error path only)."""
    message = str(exc)
    # pydantic's own limit (255), past ours; before 2.13 it said "depth exceeded"
    if "serialization depth" in message or "depth exceeded" in message:
        return f"it is nested deeper than MAX_NESTING_DEPTH ({MAX_NESTING_DEPTH} levels)"
    if "surrogates not allowed" in message:
        try:
            value = plain()
        except Exception:
            return message
        found = _find(value, _has_surrogate, keys=True)
        if found is not None:
            return _surrogate_key_problem(*found)
        found = _find(value, _has_surrogate, keys=False)
        if found is not None:
            return (
                f"the text at {found[0]} holds a lone surrogate, which is not valid Unicode; "
                "encode such data first (e.g. base64)"
            )
    return message


def _surrogate_key_problem(path: str, key: str) -> str:
    return (
        f"the dict key {key!r} at {path} holds a lone surrogate, which is not valid "
        "Unicode (stored, it would become U+FFFD); encode such data first (e.g. base64)"
    )


def _json_problem(data: bytes, plain: Callable[[], Any]) -> str | None:
    """Why ``data`` (our own JSON dump) cannot be stored and loaded back as it is, or None.

    Each check is a substring scan or two in the common case; the exact check runs only
    when a scan finds a suspect. ``plain`` gives the value as Python data (keys unchanged).
    """
    # (the substring first: the regex, with its look-behind, costs ~3 us even on a short text)
    if b"\\u0000" in data and _JSON_NUL.search(data):
        return "it contains a NUL character (\\u0000) in a string; PostgreSQL JSON cannot store it"
    # A value at level L (the payload is level 1, a container's items one level below it)
    # sits inside L - 1 arrays or objects, so the opening brackets (counting any inside
    # strings too) bound the depth: only a payload with enough of them parses in full, with
    # the parser the worker uses, so the limit is exactly what a worker can read.
    if data.count(b"[") + data.count(b"{") >= MAX_NESTING_DEPTH:
        try:
            pydantic_core.from_json(data, cache_strings=False)
        except ValueError as exc:
            if "recursion limit" in str(exc):
                return (
                    f"it is nested {_depth(data)} levels deep; the limit is MAX_NESTING_DEPTH "
                    f"({MAX_NESTING_DEPTH}), the deepest a worker's JSON parser reads"
                )
            return f"the worker's JSON parser cannot read it: {exc}"
    # Our dumps are compact: a NaN or Infinity constant follows ":", "[" or "," (or is the
    # whole text). The words inside a string ("Infinity War") rarely do, and cost one search.
    if (b"NaN" in data or b"Infinity" in data) and _JSON_NON_FINITE.search(data):
        found = _find(json.loads(data), _non_finite, keys=False)
        if found is not None:
            return _non_finite_problem(*found)
    if _FFFD in data:
        found = _find(plain(), _has_surrogate, keys=True)
        if found is not None:
            return _surrogate_key_problem(*found)
    return None


def _non_finite_problem(path: str, number: float) -> str:
    return (
        f"{path} is {number!r}, which JSON cannot hold (stored, it would become null); "
        "send a finite number, None or a string"
    )


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _has_surrogate(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find(value: Any, match: Callable[[Any], bool], *, keys: bool) -> tuple[str, Any] | None:
    """The first dict key (``keys``) or leaf that ``match`` accepts, and its path (``$.a[2]``)."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            children = []
            for key, child in node.items():
                if keys and match(key):
                    return path, key
                named = isinstance(key, str) and key.isidentifier()
                children.append((f"{path}.{key}" if named else f"{path}[{key!r}]", child))
            stack.extend(reversed(children))
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(node)]))
        elif not keys and match(node):
            return path, node
    return None


def _depth(data: bytes) -> int:
    """The nesting depth of JSON text as MAX_NESTING_DEPTH counts it: the level of its deepest
    value (for the error message only: it is slow)."""
    depth = deepest = 0
    for token in re.finditer(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]|[^\s,:\[\]{}"]+', data):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1  # a container is a value at this level; its items are one below
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
        else:  # a string (a key too: its value is as deep), number, true, false or null
            deepest = max(deepest, depth + 1)
    return deepest


def _inspect_function(
    fn: Callable[..., Any], name: str
) -> tuple[str | None, Any, TypeAdapter[Any] | None, TypeAdapter[Any] | None]:
    """Decoration-time checks of the signature; returns (param name, its annotation, payload
    & result adapters)."""
    if not callable(fn):
        raise TaskDefinitionError(f"@hy.task needs a function, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"task {name}: cannot read the signature: {exc}") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TaskDefinitionError(
            f"task {name}: cannot resolve its type annotations ({type(exc).__name__}: {exc})"
        ) from None
    params = list(sig.parameters.values())
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            raise TaskDefinitionError(
                f"task {name}: parameter *{p.name} is not allowed; a task takes one typed "
                "payload parameter (use a Pydantic model for several values)"
            )
        if p.kind is p.KEYWORD_ONLY:
            # the payload is passed positionally (by the worker and by a direct call)
            raise TaskDefinitionError(
                f"task {name}: parameter {p.name!r} is keyword-only; the payload parameter "
                "must accept a positional argument"
            )
        if p.kind is p.VAR_KEYWORD:
            raise TaskDefinitionError(
                f"task {name}: parameter **{p.name} is not allowed; a task takes one typed "
                "payload parameter (use a Pydantic model for several values)"
            )
        if p.name not in hints:
            raise TaskDefinitionError(
                f"task {name}: parameter {p.name!r} has no type annotation; every task "
                "parameter must be annotated (e.g. a Pydantic model or dict)"
            )
    if len(params) > 1:
        raise TaskDefinitionError(
            f"task {name}: takes {len(params)} parameters ({', '.join(p.name for p in params)}); "
            "a task takes one typed payload parameter: bundle them in a Pydantic model"
        )
    payload_adapter = None
    param_name = None
    annotation = None
    if params:
        param_name = params[0].name
        annotation = hints[param_name]
        payload_adapter = _adapter(name, f"parameter {param_name!r}", annotation)
    result_adapter = None
    ret = hints.get("return")
    if ret is not None and ret is not type(None):
        ret = _unwrap_awaitable(ret)
        if ret is not Any and ret is not type(None):
            result_adapter = _adapter(name, "return annotation", ret)
    return param_name, annotation, payload_adapter, result_adapter


def _unwrap_awaitable(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Awaitable, typing.Coroutine) or str(origin).endswith("Coroutine'>"):
        args = typing.get_args(annotation)
        return args[-1] if args else Any
    return annotation


def _adapter(task: str, where: str, annotation: Any) -> TypeAdapter[Any]:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        adapter.json_schema()  # proves the type round-trips through JSON
    except Exception as exc:
        raise TaskDefinitionError(
            f"task {task}: {where} has type {annotation!r}, which cannot be validated and "
            f"stored as JSON ({type(exc).__name__}); use a Pydantic model or JSON types"
        ) from None
    return adapter


# ------------------------------------------------------------------------------ registry


class _Decorator:
    def __init__(self, registry: HyrexRegistry, name: str | None, options: dict[str, Any]):
        self._registry = registry
        self._name = name
        self._options = options

    @overload
    def __call__(self, fn: Callable[[T], Coroutine[Any, Any, R]]) -> AsyncTaskDefinition[T, R]: ...
    @overload
    def __call__(
        self, fn: Callable[[], Coroutine[Any, Any, R]]
    ) -> AsyncTaskDefinition[None, R]: ...
    @overload
    def __call__(self, fn: Callable[[T], R]) -> TaskDefinition[T, R]: ...
    @overload
    def __call__(self, fn: Callable[[], R]) -> TaskDefinition[None, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> TaskDefinition[Any, Any]:
        return self._registry._register(fn, self._name, self._options)


if typing.TYPE_CHECKING:
    from .runner import Worker


class HyrexRegistry:
    """A set of tasks and the database they are sent to.

    The URL comes from ``database_url``, else ``HYREX_LIKE_DATABASE_URL``, else the embedded
    PostgreSQL (logged as a warning; forbidden by ``HYREX_LIKE_NO_EMBEDDED=1``). Nothing
    connects until the first send.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(database_url=database_url, schema_name=schema)
        self.store = Store(self.settings)
        self._tasks: dict[str, TaskDefinition[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"<HyrexRegistry schema={self.settings.schema_name!r} tasks={len(self._tasks)}>"

    @property
    def tasks(self) -> Mapping[str, TaskDefinition[Any, Any]]:
        """Registered tasks by name."""
        return dict(self._tasks)

    def get_task(self, name: str) -> TaskDefinition[Any, Any] | None:
        return self._tasks.get(name)

    @overload
    def task(self, fn: Callable[[T], Coroutine[Any, Any, R]], /) -> AsyncTaskDefinition[T, R]: ...
    @overload
    def task(self, fn: Callable[[], Coroutine[Any, Any, R]], /) -> AsyncTaskDefinition[None, R]: ...
    @overload
    def task(self, fn: Callable[[T], R], /) -> TaskDefinition[T, R]: ...
    @overload
    def task(self, fn: Callable[[], R], /) -> TaskDefinition[None, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = ...,
        priority: int = ...,
        max_retries: int = ...,
        timeout_seconds: float | None = ...,
        retry_backoff: float | Callable[[int], float] | None = ...,
        on_error: Callable[[Exception], Any] | None = ...,
    ) -> _Decorator: ...
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = _UNSET,
        priority: int = _UNSET,
        max_retries: int = _UNSET,
        timeout_seconds: float | None = _UNSET,
        retry_backoff: float | Callable[[int], float] | None = _UNSET,
        on_error: Callable[[Exception], Any] | None = _UNSET,
    ) -> TaskDefinition[Any, Any] | _Decorator:
        """Register a task: ``@hy.task`` or ``@hy.task(queue=..., max_retries=..., ...)``."""
        options = dict(
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff=retry_backoff,
            on_error=on_error,
        )
        if fn is not None:
            return self._register(fn, name, options)
        return _Decorator(self, name, options)

    def _register(
        self, fn: Callable[..., Any], name: str | None, options: dict[str, Any]
    ) -> TaskDefinition[Any, Any]:
        task_name = name if name is not None else getattr(fn, "__name__", None)
        try:
            check_name("task name", task_name)
        except InvalidTaskOption as exc:
            raise InvalidTaskOption(f"task {fn!r}: {exc}") from None
        assert isinstance(task_name, str)
        config = _config(task_name, None, options)
        param_name, annotation, payload_adapter, result_adapter = _inspect_function(fn, task_name)
        if task_name in self._tasks:
            raise DuplicateTaskName(
                f"task name {task_name!r} is already registered (by "
                f"{self._tasks[task_name].fn!r}); pass name= to tell them apart"
            )
        kind = AsyncTaskDefinition if inspect.iscoroutinefunction(fn) else TaskDefinition
        definition: TaskDefinition[Any, Any] = kind(
            self, fn, task_name, config, param_name, payload_adapter, result_adapter, annotation
        )
        self._tasks[task_name] = definition
        return definition

    def get_handle(self, task_id: uuid.UUID | str) -> TaskHandle[Any]:
        """A handle for an existing task id (e.g. one stored by the application).

        Raises `InvalidTaskId` if ``task_id`` is no UUID, `TaskNotFound` if no such task
        exists. Its ``result`` is typed (rebuilt) when the task is registered here.
        """
        if isinstance(task_id, uuid.UUID):
            tid = task_id
        else:
            try:
                tid = uuid.UUID(str(task_id))
            except ValueError:
                raise InvalidTaskId(
                    f"task id {task_id!r} is not a UUID; pass the id of a handle "
                    "(str(handle.id) or handle.id)"
                ) from None
        handle: TaskHandle[Any] = TaskHandle(tid, "", self.store).refresh()
        task = self._tasks.get(handle.task_name)
        handle._result_adapter = task.result_adapter if task else None
        return handle

    def configure(self, **overrides: Any) -> None:
        """Replace some settings (the CLI does this for --database-url); closes open pools."""
        self.store.close()
        update = {k: v for k, v in overrides.items() if v is not None}
        try:
            self.settings = Settings.model_validate(self.settings.model_dump() | update)
        except ValueError as exc:
            raise ConfigurationError(f"invalid hyrex-like settings: {exc}") from exc
        self.store = Store(self.settings)

    def migrate(self) -> list[int]:
        """Create or upgrade the schema now (otherwise it happens on first use)."""
        return self.store.migrate()

    def worker(
        self,
        *,
        queues: Iterable[str] | None = None,
        processes: int | None = None,
        prefetch: int | None = None,
        grace_period: float | None = None,
        heartbeat_interval: float | None = None,
        stale_after: float | None = None,
        poll_interval: float | None = None,
        startup_timeout: float | None = None,
        log_level: str | None = None,
        log_format: str | None = None,
        app: str | None = None,
    ) -> Worker:
        """A worker for these tasks in this process: ``hy.worker(queues=["emails"]).run()``.

        The options are ``hyrex-like run-worker``'s (None: its default), checked now: a bad
        one raises `ConfigurationError` naming it. ``run()`` blocks until `Worker.stop` (or
        SIGTERM/SIGINT from the main thread) and returns the exit code; ``start()``/``with``
        run it on a thread. Executors import the app by ``app`` (``module:attribute``), by
        default the module-level name that holds this registry. Logging is configured only
        if ``log_level`` or ``log_format`` is given. See `hyrex_like.runner`.
        """
        from .runner import Worker  # at call time: the registry never imports the dispatcher

        return Worker.create(
            self,
            app=app,
            queues=queues,
            processes=processes,
            prefetch=prefetch,
            grace_period=grace_period,
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            poll_interval=poll_interval,
            startup_timeout=startup_timeout,
            log_level=log_level,
            log_format=log_format,
        )

    def close(self) -> None:
        """Close the connection pools (sync and async) and the wake-up thread's connection.

        Sending again afterwards opens them anew (and checks the schema again)."""
        self.store.close()

    async def aclose(self) -> None:
        """`close` for async code: waits without blocking the event loop."""
        await self.store.aclose()

    def __enter__(self) -> HyrexRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> HyrexRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
