"""Async tasks side by side: how an executor serves when ``async_concurrency`` (K) is above 1.

The executor's event loop runs up to K ``async def`` jobs at once, each as an asyncio task
(so each has its own copy of the context variables: `get_hyrex_context` is per task), and at
most a task's own ``async_concurrency`` of one task name. Jobs start in the order received; a
job that cannot start yet (no lane free, or its task at its cap) waits, and the jobs behind it
wait too. A sync job waits until no coroutine runs, then runs alone on the loop's thread (it
is CPU-bound: running it beside coroutines would only stall them).

Each job reports its start (`START`) before its result, and results go to the parent as jobs
end, in any order. A job's timeout is enforced here: its coroutine is cancelled (`TIMEOUT`)
while its siblings run on; a coroutine that does not yield cannot be cancelled, and the
parent kills the executor once its deadline is past by a grace period. A cancel from the
parent (`CANCEL`) cancels that coroutine only (`CANCELED`). Drain and take-back work as in
the one-at-a-time loop: the jobs not started are handed back (`SKIP`), running ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import time
from typing import TYPE_CHECKING, Any

import pydantic

from ..context import _LazyContext, _reset_context, _set_context
from ..errors import PayloadNotSerializable, PayloadTooLarge
from . import executor as _x
from .failures import _describe_failure, call_on_error, describe_error
from .protocol import (
    _W_ARGS,
    _W_ATTEMPT,
    _W_KEY,
    _W_NAME,
    _W_TIMEOUT,
    CANCEL,
    CANCELED,
    ERR,
    OK,
    SKIP,
    START,
    TIMEOUT,
    Job,
)

if TYPE_CHECKING:
    from .executor import Executor


BACKGROUND_GRACE = 5.0
"""How long a stopping executor waits for async ``on_error`` callbacks still running."""


class _TimedOut(Exception):
    """The job's own timeout expired (not a TimeoutError the task raised)."""


class Lanes:
    """One executor's serve loop with up to ``executor.width`` coroutines at once."""

    def __init__(self, executor: Executor) -> None:
        self.x = executor
        self.width = executor.width
        self.running: dict[bytes, asyncio.Task[None]] = {}
        self.per_task: dict[str, int] = {}  # running coroutines by task name
        self.canceling: set[bytes] = set()  # running jobs the parent asked to cancel
        self.background: set[asyncio.Task[Any]] = set()  # async on_error callbacks
        self.wakeup = asyncio.Event()
        self.gone = False  # the parent is gone (or asked us to stop)
        if executor.registry.settings.tracing:
            from ..otel import traced_attempt

            self._attempt = traced_attempt(self._attempt)  # type: ignore[method-assign,assignment]

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        x = self.x
        x.run_coroutine = self._in_background
        conn = x.conn

        def wake() -> None:
            loop.call_soon_threadsafe(self.wakeup.set)

        _x._waker = wake
        loop.add_reader(conn.fileno(), self.wakeup.set)
        try:
            while not self.gone:
                self._read()
                self._control()
                if self.gone or (_x._stopped and not _x._pending):
                    break
                if self._start():
                    continue  # a sync job ran: look again at once
                await self.wakeup.wait()
                self.wakeup.clear()
            if self.background:  # async on_error callbacks still running: a bounded wait
                await asyncio.wait(list(self.background), timeout=BACKGROUND_GRACE)
        finally:
            _x._waker = None
            loop.remove_reader(conn.fileno())
            for task in list(self.running.values()):  # only once the parent gave up on them
                task.cancel()

    # ---------------------------------------------------------------- the pipe

    def _read(self) -> None:
        """Every message the parent has sent, without blocking."""
        conn = self.x.conn
        while not _x._stopped:
            # (not _RECEIVING: a take-back asked for meanwhile must not be dropped, as jobs
            # are held; it runs right after)
            _x._pipe = _x._WRITING
            try:
                if not conn.poll(0):
                    break
                message = conn.recv()
            except (EOFError, OSError):
                self.gone = True
                return
            finally:
                _x._pipe = _x._IDLE
            if message is None:
                _x._stopped = True
            elif type(message) is tuple:
                _x._controls.append(message)
            else:
                _x._pending.extend(message)
            if _x._take_back_wanted:
                _x._take_back()

    def _send(self, items: list[tuple[Any, ...]]) -> None:
        _x._pipe = _x._WRITING
        try:
            with _x._send_lock:
                self.x.conn.send_bytes(pickle.dumps(items, pickle.HIGHEST_PROTOCOL))
        except OSError:
            self.gone = True
        finally:
            _x._pipe = _x._IDLE
        if _x._take_back_wanted:
            _x._take_back()

    def _control(self) -> None:
        """Carry out the parent's control messages (a cancel of a running coroutine)."""
        while _x._controls:
            kind, key = _x._controls.pop(0)[:2]
            task = self.running.get(key)
            if kind == CANCEL and task is not None and key not in self.canceling:
                self.canceling.add(key)
                task.cancel()
            # (else it ended meanwhile: its result is on its way)

    # ---------------------------------------------------------------- starting jobs

    def _start(self) -> bool:
        """Start what may start now, in order; True if a sync job ran (the loop was held)."""
        pending = _x._pending
        registry = self.x.registry
        starts: list[tuple[Any, ...]] = []
        while pending:
            if _x._draining:
                # One job at a time (popleft is atomic): a take-back that runs meanwhile
                # answers for those still in `pending`, this loop for the ones it popped.
                skipped: list[tuple[Any, ...]] = []
                while True:
                    try:
                        w = pending.popleft()
                    except IndexError:
                        break
                    skipped.append((SKIP, w[_W_KEY], w[_W_ATTEMPT]))
                self._flush(starts)
                self._send(skipped)
                return False
            try:
                wire = pending[0]
            except IndexError:  # a take-back (signal handler) emptied it since `while pending`
                break
            definition = registry.get_task(wire[_W_NAME])
            if definition is None or not definition.is_async:
                if self.running:
                    break  # it runs alone, once the coroutines ahead of it end
                try:
                    pending.popleft()  # started from here on: a take-back no longer sees it
                except IndexError:  # a take-back emptied it
                    break
                self._flush(starts)
                self._send([(START, wire[_W_KEY], wire[_W_ATTEMPT])])
                result = self.x.run(wire)
                if not self.x.streams.intact():
                    self.x._restore_streams(wire)
                self._send([result])
                return True
            if len(self.running) >= self.width:
                break
            name = wire[_W_NAME]
            cap = definition.config.async_concurrency
            if cap is not None and self.per_task.get(name, 0) >= cap:
                break
            try:
                pending.popleft()
            except IndexError:
                break
            key = wire[_W_KEY]
            starts.append((START, key, wire[_W_ATTEMPT]))
            self.per_task[name] = self.per_task.get(name, 0) + 1
            self.running[key] = asyncio.ensure_future(self._job(wire, definition))
        self._flush(starts)
        return False

    def _flush(self, starts: list[tuple[Any, ...]]) -> None:
        # Before the jobs' first step: a coroutine that never yields is already known started.
        if starts:
            self._send(starts[:])
            starts.clear()

    # ---------------------------------------------------------------- one job

    async def _job(self, wire: tuple[Any, ...], definition: Any) -> None:
        self._send([await self._attempt(wire, definition)])

    async def _attempt(self, wire: tuple[Any, ...], definition: Any) -> tuple[Any, ...]:
        """Run one async job to its result (its slot freed when it returns)."""
        x = self.x
        key, name, attempt = wire[_W_KEY], wire[_W_NAME], wire[_W_ATTEMPT]
        timeout = wire[_W_TIMEOUT]
        progress = x.progress
        started = time.time()
        # Set inside this asyncio task: its own copy of the context variables.
        token = _set_context(_LazyContext(lambda: progress.track(x._context(Job.from_wire(wire)))))
        retryable = True
        result: tuple[Any, ...]
        try:
            try:
                payload = definition.load_payload(wire[_W_ARGS])
            except pydantic.ValidationError:
                retryable = False
                raise
            value = await self._call(definition, payload, timeout)
            if key in self.canceling:  # it caught the cancellation and returned
                raise asyncio.CancelledError
            try:
                dumped = definition.dump_result(value)
                last = progress.final(name, True, key)
            except (PayloadNotSerializable, PayloadTooLarge):
                retryable = False
                raise
            result = (OK, key, attempt, started, time.time(), dumped)
            if last is not None:
                result = (*result, last)
        except _TimedOut:
            why = f"attempt ran past its timeout of {timeout:g}s; its coroutine was cancelled"
            result = self._with_last((TIMEOUT, key, attempt, started, time.time(), why), name, key)
        except asyncio.CancelledError as exc:
            if key in self.canceling:
                result = self._with_last((CANCELED, key, attempt, started, time.time()), name, key)
            else:  # raised by the task itself: its failure, as in the one-at-a-time loop
                result = await self._failed(wire, definition, exc, started, retryable)
        except BaseException as exc:  # every one fails the attempt, never the executor
            if key in self.canceling:  # raised once cancelled: the cancel ended it
                result = self._with_last((CANCELED, key, attempt, started, time.time()), name, key)
            else:
                result = await self._failed(wire, definition, exc, started, retryable)
        finally:
            _reset_context(token)
            self.running.pop(key, None)
            self.canceling.discard(key)
            self.per_task[name] -= 1
            self.wakeup.set()
        return result

    @staticmethod
    async def _call(definition: Any, payload: Any, timeout: float | None) -> Any:
        if not timeout:
            return await definition.call(payload)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                value = await definition.call(payload)
        except BaseException:
            if scope.expired():  # (whatever it raised once cancelled: its timeout ended it)
                raise _TimedOut from None
            raise
        if scope.expired():  # it caught the cancellation and returned: timed out all the same
            raise _TimedOut
        return value

    def _with_last(self, result: tuple[Any, ...], name: str, key: bytes) -> tuple[Any, ...]:
        last = self.x.progress.final(name, False, key)
        return result if last is None else (*result, last)

    async def _failed(
        self,
        wire: tuple[Any, ...],
        definition: Any,
        exc: BaseException,
        started: float,
        retryable: bool,
    ) -> tuple[Any, ...]:
        x = self.x
        key, name, attempt = wire[_W_KEY], wire[_W_NAME], wire[_W_ATTEMPT]
        finished = time.time()
        error_type, message, tb = _describe_failure(exc)
        if not x.streams.intact():
            x._restore_streams(wire)
        job = Job.from_wire(wire)
        call_on_error(
            definition,
            exc,
            job,
            lambda coroutine: self._in_background(coroutine, job),
            x.log,
            contain=(BaseException,),
        )
        failed = (ERR, key, attempt, started, finished, error_type, message, tb, retryable)
        return self._with_last(failed, name, key)

    def _in_background(self, coroutine: Any, job: Job | None = None) -> None:
        """An async ``on_error``: a task of the loop (it cannot be run to its end inside it);
        what it raises is logged as a sync one's would be (`call_on_error`)."""
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        log = self.x.log

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None or job is None:
                return
            with contextlib.suppress(Exception):  # our stderr broken: nowhere left to say it
                log.error(
                    "on_error_failed",
                    task_id=str(job.task_id),
                    task_name=job.task_name,
                    attempt=job.attempt,
                    error=describe_error(exc),
                )

        task.add_done_callback(done)
