"""The front door: `HyrexRegistry` (a set of tasks and their database) and ``@hy.task``.

Registering checks the name, the options (`hyrex_like.task_config`) and the signature
(`hyrex_like.signature`), and returns a `TaskDefinition` (`hyrex_like.task`); handles are in
`hyrex_like.handle`. The registry never imports the dispatcher; the dispatcher consumes registries.
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, overload

import psycopg

from .config import Settings
from .db import Store
from .errors import (
    ConfigurationError,
    DuplicateTaskName,
    InvalidTaskId,
    InvalidTaskOption,
    UnknownTaskName,
)
from .handle import TaskHandle
from .inspect import InspectMethods
from .inspect import WorkerInfo as WorkerInfo  # re-exported
from .kv import KVMethods
from .queues import QueueInfo as QueueInfo  # re-exported
from .queues import QueueMethods
from .registry_workflows import WorkflowMethods
from .schedules import Schedule, ScheduleInfo, bind_schedule, schedule_infos
from .signature import _inspect_function
from .task import AsyncTaskDefinition, TaskSender, named_task
from .task import TaskDefinition as TaskDefinition  # re-exported: the worker imports it here
from .task_config import _UNSET, _config
from .task_config import check_name as check_name  # re-exported: the CLI and worker import it

T = TypeVar("T")
R = TypeVar("R")


class _Decorator:
    def __init__(
        self,
        registry: HyrexRegistry,
        name: str | None,
        options: dict[str, Any],
        schedule: Schedule | None = None,
    ):
        self._registry = registry
        self._name = name
        self._options = options
        self._schedule = schedule

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
        return self._registry._register(fn, self._name, self._options, self._schedule)


if typing.TYPE_CHECKING:
    from .observer import WorkerObserver
    from .runner import Worker


class HyrexRegistry(WorkflowMethods, KVMethods, QueueMethods, InspectMethods):
    """A set of tasks and the database they are sent to.

    The URL comes from ``database_url``, else ``HYREX_LIKE_DATABASE_URL``, else the embedded
    PostgreSQL (logged as a warning; forbidden by ``HYREX_LIKE_NO_EMBEDDED=1``). Nothing
    connects until the first send.

    ``refuse_unknown_tasks``: `send` by name refuses names not registered here
    (`UnknownTaskName`), for a registry that knows every task; by default such a send goes out
    for a worker that knows the task. ``tracing``: OpenTelemetry spans for sends and attempts
    (`Settings.tracing`; else ``HYREX_LIKE_TRACING``).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        settings: Settings | None = None,
        refuse_unknown_tasks: bool = False,
        tracing: bool | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(
            database_url=database_url, schema_name=schema, tracing=tracing
        )
        self.store = Store(self.settings)
        self.refuse_unknown_tasks = refuse_unknown_tasks
        self._tasks: dict[str, TaskDefinition[Any, Any]] = {}
        self._named: dict[str, TaskDefinition[Any, Any]] = {}  # sent by name, not registered
        self._workflows = {}  # hy.workflow(...), by name

    def __repr__(self) -> str:
        return f"<HyrexRegistry schema={self.settings.schema_name!r} tasks={len(self._tasks)}>"

    @property
    def tasks(self) -> Mapping[str, TaskDefinition[Any, Any]]:
        """Registered tasks by name."""
        return dict(self._tasks)

    def get_task(self, name: str) -> TaskDefinition[Any, Any] | None:
        return self._tasks.get(name)

    def scheduled(self) -> dict[str, TaskDefinition[Any, Any]]:
        """The registered tasks that have a schedule, by name (what a scheduler fires)."""
        return {name: d for name, d in self._tasks.items() if d.schedule is not None}

    def schedules(self, *, now: datetime | None = None) -> list[ScheduleInfo]:
        """Each schedule of this registry, by task name: its next tick after ``now`` (default:
        the clock) and its newest recorded tick with that tick's task and status."""
        scheduled = self.scheduled()
        states = self.store.schedule_states(sorted(scheduled)) if scheduled else {}
        return schedule_infos(scheduled, states, datetime.now(UTC) if now is None else now)

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
        schedule: Schedule | None = ...,
        async_concurrency: int | None = ...,
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
        schedule: Schedule | None = None,
        async_concurrency: int | None = _UNSET,
    ) -> TaskDefinition[Any, Any] | _Decorator:
        """Register a task: ``@hy.task`` or ``@hy.task(queue=..., max_retries=..., ...)``.

        ``schedule`` (`every`, `cron`, `crontab`): the task also runs by itself at each tick,
        with the schedule's payload; the schedule is checked now (`InvalidSchedule`)."""
        options = dict(
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff=retry_backoff,
            on_error=on_error,
            async_concurrency=async_concurrency,
        )
        if fn is not None:
            return self._register(fn, name, options, schedule)
        return _Decorator(self, name, options, schedule)

    def _register(
        self,
        fn: Callable[..., Any],
        name: str | None,
        options: dict[str, Any],
        schedule: Schedule | None = None,
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
        if schedule is not None:
            definition.schedule = bind_schedule(schedule, definition)
        self._tasks[task_name] = definition
        return definition

    def send(
        self,
        task_name: str,
        payload: Any = _UNSET,
        *,
        conn: psycopg.Connection[Any] | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        queue: str = _UNSET,
        priority: int = _UNSET,
        max_retries: int = _UNSET,
        timeout_seconds: float | None = _UNSET,
        retry_backoff: float | Callable[[int], float] | None = _UNSET,
    ) -> TaskHandle[Any]:
        """Send a task by its name, e.g. from a script or a service that does not import it.

        A task registered here is sent exactly as ``task.with_config(...).send(...)`` would
        (its payload validated now). Any other name is refused with `UnknownTaskName` if the
        registry was made with ``refuse_unknown_tasks=True``; else the payload must be JSON
        (dicts, lists, text, numbers, bools, None, pydantic models; no payload: null) under
        the limits of every payload, and a worker that registers the task validates it: one
        that does not match fails the task at once (no retries), the error on its run. The
        options are checked as ``@hy.task``'s; the handle's result is the stored JSON.
        """
        sender = self._sender(
            task_name, queue, priority, max_retries, timeout_seconds, retry_backoff
        )
        if payload is _UNSET and task_name not in self._tasks:
            payload = None  # known by name only: no payload is null
        return sender.send(
            payload, conn=conn, delay=delay, run_at=run_at, idempotency_key=idempotency_key
        )

    async def asend(
        self,
        task_name: str,
        payload: Any = _UNSET,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        queue: str = _UNSET,
        priority: int = _UNSET,
        max_retries: int = _UNSET,
        timeout_seconds: float | None = _UNSET,
        retry_backoff: float | Callable[[int], float] | None = _UNSET,
    ) -> TaskHandle[Any]:
        """Async twin of `send` (by name)."""
        sender = self._sender(
            task_name, queue, priority, max_retries, timeout_seconds, retry_backoff
        )
        if payload is _UNSET and task_name not in self._tasks:
            payload = None  # known by name only: no payload is null
        return await sender.asend(
            payload, conn=conn, delay=delay, run_at=run_at, idempotency_key=idempotency_key
        )

    def _sender(
        self,
        task_name: str,
        queue: Any,
        priority: Any,
        max_retries: Any,
        timeout_seconds: Any,
        retry_backoff: Any,
    ) -> TaskDefinition[Any, Any] | TaskSender[Any, Any]:
        """What `send` by name sends with: the registered task (or one known by name only)
        with the options given."""
        definition = self._tasks.get(task_name) or self._named.get(task_name)
        if definition is None:
            check_name("task name", task_name)
            if self.refuse_unknown_tasks:
                raise UnknownTaskName(
                    f"task {task_name!r} is not registered in this registry, which refuses "
                    f"unknown names (refuse_unknown_tasks=True); registered: "
                    f"{', '.join(sorted(self._tasks)) or 'none'}. Import the module that "
                    "defines it, or send it from a registry without refuse_unknown_tasks (a "
                    "worker that registers it validates the payload)"
                )
            definition = self._named[task_name] = named_task(self, task_name)
        options = dict(
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            retry_backoff=retry_backoff,
        )
        if all(value is _UNSET for value in options.values()):
            return definition
        return definition.with_config(**options)

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

    def cancel(self, task_id: uuid.UUID | str, *, children: bool = False) -> bool:
        """Cancel a task by id: see `TaskHandle.cancel` (`InvalidTaskId`, `TaskNotFound`)."""
        return self.get_handle(task_id).cancel(children=children)

    def retry(self, task_id: uuid.UUID | str) -> bool:
        """Retry a failed or canceled task by id: see `TaskHandle.retry`."""
        return self.get_handle(task_id).retry()

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
        busy_after: float | None = None,
        async_concurrency: int | None = None,
        grace_period: float | None = None,
        heartbeat_interval: float | None = None,
        stale_after: float | None = None,
        poll_interval: float | None = None,
        startup_timeout: float | None = None,
        scheduler: bool | None = None,
        log_level: str | None = None,
        log_format: str | None = None,
        app: str | None = None,
        observer: WorkerObserver | None = None,
        retention: float | str | None = None,
    ) -> Worker:
        """A worker for these tasks in this process: ``hy.worker(queues=["emails"]).run()``.

        The options are ``hyrex-like run-worker``'s (None: its default), checked now: a bad
        one raises `ConfigurationError` naming it. ``run()`` blocks until `Worker.stop` (or
        SIGTERM/SIGINT/SIGHUP from the main thread) and returns the exit code; ``start()``/``with``
        run it on a thread. Executors import the app by ``app`` (``module:attribute``), by
        default the module-level name that holds this registry. Logging is configured only
        if ``log_level`` or ``log_format`` is given. ``observer`` (a `WorkerObserver`) is told
        of claims, writes, heartbeats and rescues as they happen. ``retention``: delete
        finished tasks older than this (seconds or '7d'); see run-worker --retention.
        ``scheduler=False``: do not fire the app's schedules in this worker (see run-worker
        --no-scheduler).
        See `hyrex_like.runner`.
        """
        from .runner import Worker  # at call time: the registry never imports the dispatcher

        return Worker.create(
            self,
            app=app,
            observer=observer,
            queues=queues,
            processes=processes,
            prefetch=prefetch,
            busy_after=busy_after,
            async_concurrency=async_concurrency,
            grace_period=grace_period,
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            poll_interval=poll_interval,
            startup_timeout=startup_timeout,
            scheduler=scheduler,
            log_level=log_level,
            log_format=log_format,
            **({"retention": retention} if retention is not None else {}),
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
