"""The on_error calls the parent makes (for attempts it ended: timeouts, lost executors), on a
thread of their own, so a slow handler never holds up dispatch."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import HyrexLikeError
from ..registry import HyrexRegistry
from .failures import call_on_error, describe_error
from .processes import set_os_thread_name
from .protocol import Job

HANDLER_BACKLOG = 1_000  # on_error calls waiting for the handler thread, at most


class _HandlerThread:
    """One daemon thread for the calls. Bounded: past `HANDLER_BACKLOG` waiting calls, `submit`
    refuses. Daemon: a handler that never returns must not keep the worker alive."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], None]) -> bool:
        with self._idle:
            if self._pending >= HANDLER_BACKLOG:
                return False
            self._pending += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="hyrex-on-error", daemon=True)
            self._thread.start()
        self._calls.put(call)
        return True

    def drain(self, deadline: float) -> int:
        """Wait until every call has returned, or ``deadline``; returns how many had not."""
        with self._idle:
            self._idle.wait_for(
                lambda: self._pending == 0 or time.monotonic() >= deadline,
                max(0.0, deadline - time.monotonic()),
            )
            return self._pending

    def _serve(self) -> None:
        set_os_thread_name(b"hyrex-on-error")
        while True:
            call = self._calls.get()
            try:
                call()
            except BaseException as exc:  # call_on_error logs the handler's own errors
                self._log.error("on_error_failed", error=describe_error(exc))
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


class OnErrorCalls:
    """Calls a task's on_error for an attempt the worker ended, on the handler thread."""

    def __init__(self, registry: HyrexRegistry, log: Any) -> None:
        self.registry = registry
        self.log = log
        self._thread = _HandlerThread(log)

    def call(self, job: Job, exc: HyrexLikeError) -> None:
        """User code, however slow, must not hold up the loop: queued, never waited for."""
        definition = self.registry.get_task(job.task_name)
        if definition is None or definition.config.on_error is None:
            return
        if not self._thread.submit(
            lambda: call_on_error(definition, exc, job, asyncio.run, self.log)
        ):
            self.log.error(
                "on_error_skipped",
                task_id=str(job.task_id),
                task_name=job.task_name,
                attempt=job.attempt,
                reason=f"{HANDLER_BACKLOG} on_error calls are already waiting for the handler "
                "thread; a handler this slow needs fixing",
            )

    def drain(self, deadline: float) -> None:
        """Give the calls still running until ``deadline``; say so if some did not finish."""
        left = self._thread.drain(deadline)
        if left:
            self.log.error(
                "on_error_unfinished",
                calls=left,
                hint="on_error handlers still running when the worker stopped were cut short",
            )
