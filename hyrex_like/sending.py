"""The one sending path of a task: `_Sending` (``send``, ``asend``, ``send_many``,
``with_config``), shared by a `TaskDefinition` (it sends with its own config) and a `TaskSender`
(a definition plus config and send options, as ``task.with_config(...)`` returns it): validate
the payload, build the row (due time, idempotency key, lineage) and hand it to the store.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any, Generic, Never, TypeVar

import psycopg

from .context import (
    HyrexContext,
    _current_context,
    lineage,
)
from .db import NewTask, Store
from .errors import InvalidTaskOption
from .handle import TaskHandle
from .ids import new_task_id, new_task_ids
from .task_config import _UNSET, SendOptions, TaskConfig, _config, check_key, send_options

if typing.TYPE_CHECKING:
    from .task import TaskDefinition  # for the annotation only: it imports us
    from .workflow_types import Flow, Graph  # the same: workflows import us

T = TypeVar("T")
R = TypeVar("R")

_UNTRACED: AbstractContextManager[None] = nullcontext()


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
    priority_override: int | None = None
    """The priority given to ``with_config`` (None: not given): a workflow step keeps it instead
    of its depth-based priority."""

    def __rshift__(self, other: Flow) -> Graph:
        """``task >> next``: a workflow graph where ``next`` (a task, a sender, a `step`, a
        graph, or a list of those for a fan-out) takes this task's result."""
        from .workflow_types import Graph

        return Graph.of(self) >> other

    def __rrshift__(self, other: Sequence[object]) -> Graph:
        """``[a, b] >> task``: a fan-in (the list itself has no ``>>``)."""
        from .workflow_types import Graph

        return Graph.of(other) >> self

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
        sender = TaskSender(self.definition, config, sending)
        sender.priority_override = priority if priority is not _UNSET else self.priority_override
        return sender

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

    def _traced(self, store: Store, tasks: Sequence[NewTask]) -> AbstractContextManager[None]:
        """The send's span when tracing is on (it sets the rows' trace context), else nothing:
        opentelemetry is imported only when tracing is on."""
        if not store.settings.tracing:
            return _UNTRACED
        from .otel import send_span

        return send_span(self.definition.name, self.config.queue, tasks)

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
            if self.send_options is None and not store.settings.tracing:  # the plain send
                new = self._new_task(payload, self.config.backoff_schedule())
                store.insert_task(new, conn)
                return self._handle(new)
        new = self._new_timed(payload, self._options(delay, run_at, idempotency_key))
        with self._traced(store, [new]):
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
            if self.send_options is None and not store.settings.tracing:
                new = self._new_task(payload, self.config.backoff_schedule())
                await store.ainsert_task(new, conn)
                return self._handle(new)
        new = self._new_timed(payload, self._options(delay, run_at, idempotency_key))
        with self._traced(store, [new]):
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
                with self._traced(store, tasks):
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
        with self._traced(store, tasks):
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
