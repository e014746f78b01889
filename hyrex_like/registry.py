"""Task definitions: `HyrexRegistry`, `@hy.task`, decoration-time checks, `send`/`with_config`.

The registry never imports the dispatcher; the dispatcher consumes registries.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

import psycopg
import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from .config import Settings
from .context import HyrexContext, get_hyrex_context
from .errors import (
    ConfigurationError,
    DuplicateTaskName,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    TaskDefinitionError,
    TaskNotFound,
    TaskWaitTimeout,
)
from .store import NewTask, RunRow, Store, TaskRow, new_task_id, new_task_ids

T = TypeVar("T")
R = TypeVar("R")

FINAL_STATUSES = frozenset({"completed", "failed", "canceled"})
_NAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# An escaped NUL in JSON text (an even number of backslashes before it means it is literal).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


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


class TaskRun(BaseModel):
    """One attempt of a task, as recorded by the worker that ran it."""

    model_config = ConfigDict(frozen=True)

    attempt_number: int
    status: str
    worker_id: uuid.UUID | None
    started_at: datetime
    finished_at: datetime | None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None

    @property
    def error(self) -> str | None:
        """``"Type: message"`` for a failed attempt, else ``None``."""
        if self.error_type is None:
            return None
        return f"{self.error_type}: {self.error_message}"

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

    def __init__(self, task_id: uuid.UUID, task_name: str, store: Store) -> None:
        self.id = task_id
        self.task_name = task_name
        self._store = store
        self._row: TaskRow | None = None
        self._runs: list[TaskRun] = []

    def __repr__(self) -> str:
        status = self._row.status if self._row else "unknown"
        return f"<TaskHandle {self.task_name} {self.id} {status}>"

    def refresh(self) -> TaskHandle[R]:
        """Reload the task row and its runs from the database."""
        row, runs = self._store.get_task(self.id)
        if row is None:
            raise TaskNotFound(f"task {self.id} ({self.task_name}) does not exist")
        self._row = row
        self.task_name = row.task_name
        self._runs = [TaskRun._from_row(r) for r in runs]
        return self

    def _loaded(self) -> TaskRow:
        if self._row is None:
            self.refresh()
        assert self._row is not None
        return self._row

    @property
    def status(self) -> str:
        """Status as of the last refresh: queued, running, completed, failed or canceled."""
        return self._loaded().status

    @property
    def result(self) -> Any:
        """The JSON result of the completed attempt (``None`` until completed)."""
        return self._loaded().result

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self._loaded().last_error

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
        return self._loaded().status in FINAL_STATUSES

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
                    f"task {self.id} ({self.task_name}) is still {self.status} after {timeout}s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def await_done(
        self, timeout: float | None = 60.0, poll_interval: float = 0.05
    ) -> TaskHandle[R]:
        """Async twin of `wait` (reads run in a thread so the event loop stays free)."""
        return await asyncio.to_thread(self.wait, timeout, poll_interval)


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
        return self._row(new_task_id(), args_json, schedule, get_hyrex_context())

    def _new_tasks(self, payloads: Iterable[Any], schedule: list[float]) -> list[NewTask]:
        """Validate every payload (raising before anything is written), then build the rows."""
        d = self.definition
        args = [d.dump_payload(p) for p in payloads]
        ctx = get_hyrex_context()
        return [
            self._row(task_id, args_json, schedule, ctx)
            for task_id, args_json in zip(new_task_ids(len(args)), args, strict=True)
        ]

    def _row(
        self, task_id: uuid.UUID, args_json: str, schedule: list[float], ctx: HyrexContext | None
    ) -> NewTask:
        """The row for one task; sent from inside a task, it records that task as its parent."""
        c = self.config
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
            ctx.task_id if ctx else None,
            (ctx.root_id or ctx.task_id) if ctx else None,
        )

    def send(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> TaskHandle[R]:
        """Validate ``payload`` and write one task row; with ``conn``, inside its transaction."""
        new = self._new_task(payload, self.config.backoff_schedule())
        self.definition.registry.store.insert_task(new, conn)
        return TaskHandle(new.id, new.task_name, self.definition.registry.store)

    async def asend(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> TaskHandle[R]:
        """Async twin of `send`, for async web handlers."""
        new = self._new_task(payload, self.config.backoff_schedule())
        await self.definition.registry.store.ainsert_task(new, conn)
        return TaskHandle(new.id, new.task_name, self.definition.registry.store)

    def send_many(
        self,
        payloads: Iterable[T | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[TaskHandle[R]]:
        """Validate every payload, then write all rows in one COPY (all or none)."""
        tasks = self._new_tasks(payloads, self.config.backoff_schedule())
        store = self.definition.registry.store
        store.insert_tasks(tasks, conn)
        return [TaskHandle(t.id, t.task_name, store) for t in tasks]


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
    ) -> None:
        self.registry = registry
        self.fn = fn
        self.name = name
        self.param_name = param_name
        self.payload_adapter = payload_adapter
        self.result_adapter = result_adapter
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
    def __call__(self, payload: Any = _UNSET) -> Any:
        """Run the function here and now, like a plain call (no database involved)."""
        if self.param_name is None:
            if payload is not _UNSET:
                raise TypeError(f"task {self.name} takes no payload, got {type(payload).__name__}")
            return self.fn()
        if payload is _UNSET:
            raise TypeError(f"task {self.name} needs a payload ({self.param_name})")
        return self.fn(payload)

    # -- payload and result conversion (used by send and by the worker) -------------------

    def dump_payload(self, payload: Any) -> str:
        """Validate ``payload`` against the annotation and return its JSON text."""
        if self.payload_adapter is None:
            if payload is not _UNSET and payload is not None:
                raise TypeError(f"task {self.name} takes no payload, got {type(payload).__name__}")
            data = b"null"
        else:
            if payload is _UNSET:
                raise TypeError(f"task {self.name} needs a payload ({self.param_name})")
            value = self.payload_adapter.validate_python(payload)
            try:
                data = self.payload_adapter.dump_json(value)
            except (pydantic_core.PydanticSerializationError, ValueError) as exc:
                # valid for the annotation yet not JSON: e.g. an object inside Any, bad bytes
                raise PayloadNotSerializable(
                    f"payload for task {self.name} cannot be stored as JSON: {exc}"
                ) from None
        limit = self.registry.settings.max_payload_bytes
        if len(data) > limit:
            raise PayloadTooLarge(
                f"payload for task {self.name} is {len(data)} bytes as JSON; the limit is {limit} "
                "(HYREX_LIKE_MAX_PAYLOAD_BYTES). Store large data elsewhere and send a reference"
            )
        if _JSON_NUL.search(data):
            raise PayloadNotSerializable(
                f"payload for task {self.name} contains a NUL character (\\u0000) in a string; "
                "PostgreSQL JSON cannot store it"
            )
        return data.decode("utf-8")

    def load_payload(self, args: Any) -> Any:
        """Validate stored JSON args (already decoded) back into the annotated type."""
        if self.payload_adapter is None:
            return None
        return self.payload_adapter.validate_python(args)

    def dump_result(self, value: Any) -> str:
        """The return value as JSON text; raises PayloadNotSerializable if it cannot be."""
        try:
            if self.result_adapter is not None:
                data = self.result_adapter.dump_json(value)
            else:
                data = pydantic_core.to_json(value)
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            raise PayloadNotSerializable(
                f"task {self.name} returned a value that cannot be stored as JSON "
                f"({type(value).__name__}): {exc}"
            ) from None
        if _JSON_NUL.search(data):
            raise PayloadNotSerializable(
                f"task {self.name} returned a string with a NUL character (\\u0000); "
                "PostgreSQL JSON cannot store it"
            )
        return data.decode("utf-8")

    def call(self, payload: Any) -> Any:
        """Call the function with a validated payload; returns a coroutine for async tasks."""
        if self.param_name is None:
            return self.fn()
        return self.fn(payload)


def _inspect_function(
    fn: Callable[..., Any], name: str
) -> tuple[str | None, TypeAdapter[Any] | None, TypeAdapter[Any] | None]:
    """Decoration-time checks of the signature; returns (param name, payload & result adapters)."""
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
    if params:
        param_name = params[0].name
        payload_adapter = _adapter(name, f"parameter {param_name!r}", hints[param_name])
    result_adapter = None
    ret = hints.get("return")
    if ret is not None and ret is not type(None):
        ret = _unwrap_awaitable(ret)
        if ret is not Any and ret is not type(None):
            result_adapter = _adapter(name, "return annotation", ret)
    return param_name, payload_adapter, result_adapter


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
    def __call__(self, fn: Callable[[T], R]) -> TaskDefinition[T, R]: ...
    @overload
    def __call__(self, fn: Callable[[], R]) -> TaskDefinition[None, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> TaskDefinition[Any, Any]:
        return self._registry._register(fn, self._name, self._options)


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
        param_name, payload_adapter, result_adapter = _inspect_function(fn, task_name)
        if task_name in self._tasks:
            raise DuplicateTaskName(
                f"task name {task_name!r} is already registered (by "
                f"{self._tasks[task_name].fn!r}); pass name= to tell them apart"
            )
        definition: TaskDefinition[Any, Any] = TaskDefinition(
            self, fn, task_name, config, param_name, payload_adapter, result_adapter
        )
        self._tasks[task_name] = definition
        return definition

    def get_handle(self, task_id: uuid.UUID | str, task_name: str = "?") -> TaskHandle[Any]:
        """A handle for an existing task id (e.g. one stored by the application)."""
        tid = task_id if isinstance(task_id, uuid.UUID) else uuid.UUID(str(task_id))
        return TaskHandle(tid, task_name, self.store).refresh()

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

    def close(self) -> None:
        """Close the connection pools."""
        self.store.close()
