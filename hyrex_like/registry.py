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
from types import TracebackType
from typing import Any, TypeVar, overload

from .config import Settings
from .db import Store
from .errors import ConfigurationError, DuplicateTaskName, InvalidTaskId, InvalidTaskOption
from .handle import TaskHandle
from .signature import _inspect_function
from .task import AsyncTaskDefinition
from .task import TaskDefinition as TaskDefinition  # re-exported: the worker imports it here
from .task_config import _UNSET, _config
from .task_config import check_name as check_name  # re-exported: the CLI and worker import it

T = TypeVar("T")
R = TypeVar("R")


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
    from .observer import WorkerObserver
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
        grace_period: float | None = None,
        heartbeat_interval: float | None = None,
        stale_after: float | None = None,
        poll_interval: float | None = None,
        startup_timeout: float | None = None,
        log_level: str | None = None,
        log_format: str | None = None,
        app: str | None = None,
        observer: WorkerObserver | None = None,
    ) -> Worker:
        """A worker for these tasks in this process: ``hy.worker(queues=["emails"]).run()``.

        The options are ``hyrex-like run-worker``'s (None: its default), checked now: a bad
        one raises `ConfigurationError` naming it. ``run()`` blocks until `Worker.stop` (or
        SIGTERM/SIGINT/SIGHUP from the main thread) and returns the exit code; ``start()``/``with``
        run it on a thread. Executors import the app by ``app`` (``module:attribute``), by
        default the module-level name that holds this registry. Logging is configured only
        if ``log_level`` or ``log_format`` is given. ``observer`` (a `WorkerObserver`) is told
        of claims, writes, heartbeats and rescues as they happen. See `hyrex_like.runner`.
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
