"""Task definitions and senders: a registered function with its config, how it validates,
dumps and sends a payload, and how a direct call runs it.

`TaskDefinition` is what ``@hy.task`` returns; ``with_config`` returns a `TaskSender`, which
holds the definition and the merged config. Both send through one path (`_Sending`).
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, Never, TypeVar, overload

import psycopg
import pydantic
import pydantic_core
from pydantic import BaseModel, TypeAdapter

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
from .db import NewTask
from .errors import InvalidTaskOption, PayloadNotSerializable, PayloadTooLarge
from .handle import TaskHandle
from .ids import new_task_id, new_task_ids
from .payloads import _ANY_SERIALIZER, _json_problem, _json_serializer, _serialization_problem
from .schedules import Schedule
from .task_config import _UNSET, SendOptions, TaskConfig, _config, check_key, send_options

if typing.TYPE_CHECKING:
    from .registry import HyrexRegistry  # for the annotation only: the registry imports us

T = TypeVar("T")
R = TypeVar("R")


class _Sending(Generic[T, R]):
    """The one sending path (`send`, `asend`, `send_many`, `with_config`), shared by a
    `TaskDefinition` (it sends with its own config) and a `TaskSender` (a definition plus
    config overrides). Neither is the other: a sender holds its definition."""

    definition: TaskDefinition[T, R]
    """The task sent; a definition's is itself."""
    config: TaskConfig
    """The config a send writes (queue, priority, retries, timeout, backoff)."""
    send_options: SendOptions | None = None
    """A sender's delay or due time and idempotency key (None: none; a send's own override)."""

    def with_config(
        self,
        *,
        queue: str = _UNSET,
        priority: int = _UNSET,
        max_retries: int = _UNSET,
        timeout_seconds: float | None = _UNSET,
        retry_backoff: float | Callable[[int], float] | None = _UNSET,
        on_error: Callable[[Exception], Any] | None = _UNSET,
        delay: timedelta | float | None = _UNSET,
        run_at: datetime | None = _UNSET,
        idempotency_key: str | None = _UNSET,
    ) -> TaskSender[T, R]:
        """A sender with some options changed; the task's own config is untouched.

        ``delay``, ``run_at`` and ``idempotency_key`` apply to every send of the sender as the
        send's own arguments do (which override them); a delay counts from each send. None
        clears one. ``on_error`` is accepted only to say clearly that it cannot change per
        send: the worker runs the ``on_error`` registered with the task.
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
        name = self.definition.name
        config = _config(name, self.config, options)
        sending = send_options(
            name, self.send_options, delay, run_at, idempotency_key, unset=_UNSET
        )
        return TaskSender(self.definition, config, sending)

    def _options(self, delay: Any, run_at: Any, idempotency_key: Any) -> SendOptions:
        """This sender's options with a send's own (None: not given) in their place."""
        merged = send_options(
            self.definition.name, self.send_options, delay, run_at, idempotency_key, unset=None
        )
        return merged or SendOptions()

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

    def _found(self, task: NewTask, found: tuple[Any, bool]) -> TaskHandle[R]:
        """The handle of a keyed send: the new task's, or the live one holding the key."""
        d = self.definition
        handle: TaskHandle[R] = TaskHandle(
            found[0], task.task_name, d.registry.store, d.result_adapter
        )
        handle.deduplicated = found[1]
        return handle

    def _new_timed(self, payload: Any, options: SendOptions) -> NewTask:
        new = self._new_task(payload, self.config.backoff_schedule())
        new.run_after = options.run_after()
        new.idempotency_key = options.idempotency_key
        return new

    def send(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.Connection[Any] | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        **fields: Never,
    ) -> TaskHandle[R]:
        """Validate ``payload`` and write one task row; with ``conn``, inside its transaction.

        ``delay`` (a timedelta or seconds) or ``run_at`` (a timezone-aware datetime): the task
        is queued now and claimed no earlier. ``idempotency_key``: while a task of this name
        holding the key is queued, running or completed, the send writes nothing and returns
        that task's handle (``handle.deduplicated``); the key alone decides, not the payload.

        Without ``conn``, a send whose pooled connection turns out dead (a database restart)
        is tried once more on a fresh one; the task id, chosen here, keeps it to one row.
        """
        if fields:
            raise TypeError(self.definition._keywords_message("send", fields))
        store = self.definition.registry.store
        if delay is None and run_at is None and idempotency_key is None:
            if self.send_options is None:  # the plain send: nothing more to do
                new = self._new_task(payload, self.config.backoff_schedule())
                store.insert_task(new, conn)
                return self._handle(new)
        new = self._new_timed(payload, self._options(delay, run_at, idempotency_key))
        if new.idempotency_key is None:
            store.insert_task(new, conn)
            return self._handle(new)
        return self._found(new, store.insert_task_once(new, conn))

    async def asend(
        self,
        payload: T | Mapping[str, Any] = _UNSET,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        **fields: Never,
    ) -> TaskHandle[R]:
        """Async twin of `send`, for async web handlers."""
        if fields:
            raise TypeError(self.definition._keywords_message("asend", fields))
        store = self.definition.registry.store
        if delay is None and run_at is None and idempotency_key is None:
            if self.send_options is None:
                new = self._new_task(payload, self.config.backoff_schedule())
                await store.ainsert_task(new, conn)
                return self._handle(new)
        new = self._new_timed(payload, self._options(delay, run_at, idempotency_key))
        if new.idempotency_key is None:
            await store.ainsert_task(new, conn)
            return self._handle(new)
        return self._found(new, await store.ainsert_task_once(new, conn))

    def send_many(
        self,
        payloads: Iterable[T | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        idempotency_key: Sequence[str | None] | Callable[[Any], str | None] | None = None,
    ) -> list[TaskHandle[R]]:
        """Validate every payload, then write all rows in one transaction (all or none).

        ``delay`` or ``run_at`` applies to every task. ``idempotency_key`` is one key per
        payload (a list, None for no key) or a function of each payload (as passed) returning
        its key; a key given twice in the batch sends once (the later handles are the first's).
        A key set by ``with_config`` applies to every payload: the first is sent, the others
        are deduplicated.
        """
        store = self.definition.registry.store
        if delay is None and run_at is None and idempotency_key is None:
            if self.send_options is None:  # one COPY
                tasks = self._new_tasks(payloads, self.config.backoff_schedule())
                store.insert_tasks(tasks, conn)
                return [self._handle(t) for t in tasks]
        if isinstance(idempotency_key, str | bytes):
            raise InvalidTaskOption(
                f"invalid option for task {self.definition.name}: send_many takes one "
                "idempotency_key per payload (a list, or a function of the payload), not "
                f"{idempotency_key!r}; for one key for all, use "
                "with_config(idempotency_key=...).send_many(...)"
            )
        options = self._options(delay, run_at, None)
        items = list(payloads)
        tasks = self._new_tasks(items, self.config.backoff_schedule())
        keys = self._keys(items, idempotency_key, options.idempotency_key)
        run_after = options.run_after()
        for task, key in zip(tasks, keys, strict=True):
            task.run_after = run_after
            task.idempotency_key = key
        if all(key is None for key in keys):
            store.insert_tasks(tasks, conn)
            return [self._handle(t) for t in tasks]
        found = store.insert_tasks_once(tasks, conn)
        return [self._found(t, f) for t, f in zip(tasks, found, strict=True)]

    def _keys(
        self,
        items: list[Any],
        given: Sequence[str | None] | Callable[[Any], str | None] | None,
        default: str | None,
    ) -> list[str | None]:
        """One checked key (or None) per payload of a `send_many`."""
        name = self.definition.name
        if given is None:
            return [default] * len(items)
        if callable(given):
            keys = [given(item) for item in items]
        else:
            keys = list(given)
            if len(keys) != len(items):
                raise InvalidTaskOption(
                    f"invalid option for task {name}: send_many got {len(keys)} idempotency "
                    f"keys for {len(items)} payloads; give one per payload (None for none)"
                )
        return [
            None if key is None else check_key(name, key, f"idempotency_key of item {i}")
            for i, key in enumerate(keys)
        ]


class TaskSender(_Sending[T, R]):
    """A task with some options overridden, as ``task.with_config(...)`` returns it: sends
    the definition's task with the merged config. Not a definition (it cannot be called)."""

    def __init__(
        self,
        definition: TaskDefinition[T, R],
        config: TaskConfig,
        send_options: SendOptions | None = None,
    ) -> None:
        self.definition = definition
        self.config = config
        self.send_options = send_options


class TaskDefinition(_Sending[T, R]):
    """A registered task. Calling it runs the function in-process; `send` enqueues it."""

    schedule: Schedule | None = None
    """``@hy.task(schedule=...)``'s schedule, checked and bound to this task (its
    ``payload_json`` is what each tick sends); None for a task that runs only when sent."""

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
        self.definition = self  # code taking a definition or a sender reads .definition
        self.config = config

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


_ANY_PAYLOAD: TypeAdapter[Any] = TypeAdapter(Any)


def _runs_elsewhere(payload: Any) -> Any:
    raise TypeError("this task is known here by name only: a worker that registers it runs it")


def named_task(registry: HyrexRegistry, name: str) -> TaskDefinition[Any, Any]:
    """A task this process knows by name only (``hy.send("name", payload)`` of a task not
    registered here): its payload is any JSON a worker can load back (the rules and errors of
    every payload), validated against the task's annotation by the worker that runs it. It has
    the default config and no result type; it is never registered (a worker never sees it)."""
    return TaskDefinition(
        registry, _runs_elsewhere, name, TaskConfig(), "payload", _ANY_PAYLOAD, None
    )
