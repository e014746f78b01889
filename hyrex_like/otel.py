"""OpenTelemetry tracing (extra ``hyrex-like[otel]``), imported only when `Settings.tracing` is on.

A send runs in a PRODUCER span ``send {task}``; its context, injected with the global propagator
(W3C ``traceparent`` by default), is stored as JSON in the task row (``trace_context``). The
worker hands it to the executor with the job, which runs each attempt in a CONSUMER span
``run {task}`` whose parent is extracted from it: the attempt is the send's child, in whatever
process or host it runs. A task sent inside an attempt is a child of that attempt's span.
Workflow steps and schedule ticks carry no context: their attempts are root spans.

Spans go to the TracerProvider the application sets up; in executors, that is the one set up
when they import the app (none set: the API's no-op tracer, and no spans). An attempt whose
executor is killed (a sync task's timeout, a crash) ends no span.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import ConfigurationError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ConfigurationError(
        "tracing is on (tracing=True or HYREX_LIKE_TRACING) but opentelemetry-api is not "
        "installed: pip install 'hyrex-like[otel]'"
    ) from exc

from .db.rows import NewTask
from .states import RunStatus
from .worker.protocol import (
    _W_ATTEMPT,
    _W_KEY,
    _W_NAME,
    _W_QUEUE,
    _W_TRACE,
    CANCELED,
    ERR,
    OK,
    TIMEOUT,
)

SYSTEM = "hyrex_like"
"""``messaging.system`` of every span."""

# A proxy until the application sets its provider, which it then follows.
_tracer = trace.get_tracer("hyrex_like")

_OUTCOMES = {
    OK: RunStatus.COMPLETED,
    ERR: RunStatus.FAILED,
    TIMEOUT: RunStatus.TIMED_OUT,
    CANCELED: RunStatus.CANCELED,
}

Wire = tuple[Any, ...]


@contextmanager
def send_span(name: str, queue: str, tasks: Sequence[NewTask]) -> Iterator[None]:
    """The span of one send call (``send``, ``asend``, ``send_many``: one for all its rows);
    sets each row's ``trace_context`` to the span's context."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
    }
    if len(tasks) == 1:
        attributes["hyrex_like.task_id"] = str(tasks[0].id)
    else:
        attributes["messaging.batch.message_count"] = len(tasks)
    with _tracer.start_as_current_span(
        f"send {name}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        text = json.dumps(carrier) if carrier else None
        for task in tasks:
            task.trace_context = text
        yield


def _parent(carrier: str | None) -> Any:
    """The context a row's ``trace_context`` holds (None: none, or not a carrier)."""
    if not carrier:
        return None
    try:
        fields = json.loads(carrier)
    except ValueError:
        return None
    return propagate.extract(fields) if isinstance(fields, dict) else None


@contextmanager
def _attempt_span(wire: Wire) -> Iterator[Span]:
    # Exceptions never leave an attempt (they are its result): `_end` records them.
    with _tracer.start_as_current_span(
        f"run {wire[_W_NAME]}",
        context=_parent(wire[_W_TRACE]),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": wire[_W_QUEUE],
            "hyrex_like.task_id": str(uuid.UUID(bytes=wire[_W_KEY])),
            "hyrex_like.attempt": wire[_W_ATTEMPT],
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def _end(span: Span, result: Wire) -> None:
    """The attempt's outcome on its span: a failure as an exception event (what
    ``record_exception`` writes) and status ERROR, a timeout as status ERROR."""
    kind = result[0]
    outcome = _OUTCOMES.get(kind)
    if outcome is not None:
        span.set_attribute("hyrex_like.outcome", str(outcome))
    if kind == ERR:
        error_type, message, tb = result[5], result[6], result[7]
        span.add_event(
            "exception",
            {
                "exception.type": error_type,
                "exception.message": message,
                "exception.stacktrace": tb or "",
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
    elif kind == TIMEOUT:
        span.set_status(Status(StatusCode.ERROR, result[5]))


def traced_run(run: Callable[[Wire], Wire]) -> Callable[[Wire], Wire]:
    """An executor's `run` (one job, to its result) inside the attempt's span."""

    def traced(wire: Wire) -> Wire:
        with _attempt_span(wire) as span:
            result = run(wire)
            _end(span, result)
            return result

    return traced


def traced_attempt(
    attempt: Callable[[Wire, Any], Coroutine[Any, Any, Wire]],
) -> Callable[[Wire, Any], Coroutine[Any, Any, Wire]]:
    """An async job run side by side (`Lanes`), inside its span (current in its own
    asyncio task only)."""

    async def traced(wire: Wire, definition: Any) -> Wire:
        with _attempt_span(wire) as span:
            result = await attempt(wire, definition)
            _end(span, result)
            return result

    return traced
