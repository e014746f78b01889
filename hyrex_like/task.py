"""Task definitions and senders: a registered function with its config, how it validates,
dumps and sends a payload, and how a direct call runs it.

`TaskDefinition` is what ``@hy.task`` returns; ``with_config`` returns a `TaskSender`, which
holds the definition and the merged config. Both send through one path (`_Sending`, in
`hyrex_like.sending`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Never, TypeVar, overload

import pydantic
import pydantic_core
from pydantic import BaseModel, TypeAdapter

from .context import (
    HyrexContext,
    _LazyContext,
    _raw_context,
    _reset_context,
    _resolve,
    _set_context,
    lineage,
)
from .errors import InvalidTaskOption, PayloadNotSerializable, PayloadTooLarge
from .ids import new_task_id
from .payloads import _json_problem, _json_serializer, _serialization_problem, checked_json
from .schedules import Schedule
from .sending import TaskSender as TaskSender  # re-exported: senders are imported from here
from .sending import _Sending
from .signature import _return_annotation
from .task_config import _UNSET, TaskConfig

if typing.TYPE_CHECKING:
    from .registry import HyrexRegistry  # for the annotation only: the registry imports us

T = TypeVar("T")
R = TypeVar("R")


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
        if config.async_concurrency is not None and not self.is_async:
            # (checked here, at decoration: a sync task runs alone in its executor anyway)
            raise InvalidTaskOption(
                f"task {name!r}: async_concurrency={config.async_concurrency} applies to "
                "async def tasks only; a sync task always runs alone in its executor"
            )
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn
        self.definition = self  # code taking a definition or a sender reads .definition
        self.config = config

    def __repr__(self) -> str:
        return f"<TaskDefinition {self.name} queue={self.config.queue!r}>"

    @functools.cached_property
    def return_annotation(self) -> Any:
        """The function's declared return type (awaited, for ``async def``), or
        ``inspect.Signature.empty`` if it declares none (a workflow checks hand-offs with it)."""
        return _return_annotation(self.fn)

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
        doing = f"task {self.name} returned a value"
        data = checked_json(value, self._result_serializer, doing)
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
