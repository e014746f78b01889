"""What a failure looks like on the way out: an exception described safely (whatever its
``__str__`` does), and a task's ``on_error`` called without letting it stop anything. Both
sides use it: the executor for what a task raised, the parent for attempts it ended."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..registry import TaskDefinition
from .protocol import Job

_MAX_TRACEBACK = 20_000

_qualname = type.__dict__["__qualname__"].__get__  # bypasses a metaclass's __qualname__


def _describe_failure(exc: BaseException) -> tuple[str, str, str]:
    """(type, message, traceback) of what a task raised, whatever the exception does.

    Called inside the ``except`` block. Its ``__str__`` may raise (anything, KeyboardInterrupt
    included) or return a non-string; its class may lie about its name; its ``__notes__`` or
    its cause may break the formatter: each gets a fallback, so the attempt is still recorded
    with the real type and where it was raised."""
    error_type = _plain(_qualname(type(exc)))
    frames_of = sys.exc_info()[2]  # not exc.__traceback__: its attributes may be hostile
    try:
        tb = traceback.format_exc()
    except BaseException:  # the formatter choked on the exception: frames only
        frames = traceback.format_tb(frames_of)
        tb = "".join(["Traceback (most recent call last):\n", *frames, f"{error_type}\n"])
    return error_type, _safe_str(exc), _plain(tb)[-_MAX_TRACEBACK:]


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, or ``<exception str() failed: WhatItRaised: ...>``: never raises."""
    try:
        return _plain(str(exc))
    except BaseException as failure:  # what __str__ raised, whatever it is
        try:
            detail = _plain(str(failure))
        except BaseException:
            detail = "<str() failed>"
        return f"<exception str() failed: {_plain(_qualname(type(failure)))}: {detail}>"


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for a log line, whatever the exception's ``__str__`` does."""
    return f"{_plain(_qualname(type(exc)))}: {_safe_str(exc)}"


def _plain(text: str) -> str:
    """A ``str`` subclass (``__str__`` may return one) as a plain ``str``: only plain strings
    cross the pipe (unpickling a task's class in the parent could run its code)."""
    return text if type(text) is str else str.__str__(text)


def call_on_error(
    definition: TaskDefinition[Any, Any],
    exc: BaseException,
    job: Job,
    run_coroutine: Callable[[Any], Any],
    logger: Any,
    *,
    contain: tuple[type[BaseException], ...] = (Exception, SystemExit),
) -> None:
    """Call the task's ``on_error`` (sync or async); whatever it raises is logged, never fatal.

    The executor calls it for exceptions raised by the task, containing every BaseException
    (only task code raises there); the dispatcher for attempts it ended itself (timeout,
    executor lost), containing ``contain``.
    """
    callback = definition.config.on_error
    if callback is None:
        return
    try:
        outcome = callback(exc)  # type: ignore[arg-type]
        if asyncio.iscoroutine(outcome):
            run_coroutine(outcome)
    except contain as cb_exc:  # user code must not stop the worker
        try:
            logger.error(
                "on_error_failed",
                task_id=str(job.task_id),
                task_name=job.task_name,
                attempt=job.attempt,
                error=describe_error(cb_exc),
            )
        except Exception:  # the handler broke our stderr: nowhere left to say it
            pass
