"""The executor: a child process of the dispatcher that runs task code.

It receives batches of jobs over a pipe, runs them one at a time (``async def`` tasks on an
event loop it keeps), and sends one result message per job. It knows nothing of the database,
and of signals only two. Before each job it checks its ``draining`` flag, which the parent
raises with `DRAIN_SIGNAL` when it begins to stop, so on shutdown it hands back the jobs it has
not started. `TAKE_BACK_SIGNAL` asks it, while a long task runs, to hand back at once the jobs
queued behind that task (`_take_back`), so they run elsewhere. SIGINT and SIGTERM are ignored:
the parent decides when it stops. What a task reports with ``update_progress`` goes to the
parent over the same pipe (`progress_out`): sampled while it runs, and its last value with
the result.

What a task does cannot take the executor down with it, short of killing the process: whatever
it raises (``KeyboardInterrupt``, any ``BaseException``, an exception whose ``str`` raises)
fails its attempt with its own type and traceback; standard streams it closed or replaced are
put back before the next task (`_StdStreams`). Each executor leads a session (and process
group) of its own, so the parent can kill it together with the processes its tasks started
(`kill_executor_group`); a child that detaches into a session or group of its own is its own.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pydantic
import structlog

from ..config import Settings
from ..context import (
    HyrexContext,
    _built,
    _LazyContext,
    _reset_context,
    _set_context,
)
from ..errors import PayloadNotSerializable, PayloadTooLarge
from ..registry import HyrexRegistry, TaskDefinition
from .app import load_registry
from .failures import _describe_failure, call_on_error
from .processes import die_with_parent, lead_own_session
from .progress_out import ProgressMany, ProgressOut
from .protocol import (
    _W_ARGS,
    _W_ATTEMPT,
    _W_KEY,
    _W_NAME,
    DRAIN_SIGNAL,
    ERR,
    OK,
    READY,
    SKIP,
    TAKE_BACK_SIGNAL,
    Job,
)
from .streams import _StdStreams

log = structlog.get_logger("hyrex_like.executor")

_draining = False
# Wakes the event loop of an executor running async tasks side by side (`lanes`), so that it
# hands back its unstarted jobs at once rather than when a running one ends.
_waker: Callable[[], None] | None = None


def _on_drain_signal(signum: int, frame: Any) -> None:
    global _draining
    _draining = True
    if _waker is not None:
        _waker()


# The take-back state, at module level because the signal handler works on it.
_pending: deque[tuple[Any, ...]] = deque()  # jobs received and not started, in order
_conn: Connection | None = None  # the pipe, once the executor serves
_IDLE, _RECEIVING, _WRITING = 0, 1, 2
_pipe = _IDLE  # what the main thread is doing with the pipe: a handler never cuts into it
_take_back_wanted = False  # asked for during a write: answered right after it
_stopped = False  # a take-back read the parent's stop message from the pipe
_controls: list[tuple[Any, ...]] = []  # control messages (CANCEL) a take-back read
# Held by whoever writes to the pipe (the main thread sets `_pipe` to _WRITING first)
_send_lock = threading.Lock()


def _on_take_back_signal(signum: int, frame: Any) -> None:
    global _take_back_wanted
    if _pipe == _RECEIVING or _conn is None:
        return  # waiting for a batch (or not serving yet): nothing held is unanswered
    _take_back_wanted = True
    if _pipe == _IDLE:
        _take_back()


def _take_back() -> None:
    """Answer SKIP at once for every job held and not started: those received (`_pending`)
    and the batches still waiting in the pipe. Runs in the main thread, from the handler (at
    the next bytecode boundary, even inside a task) or right after a result was sent. A job is
    started once the main loop has popped it from `_pending`: the two never share one."""
    global _pipe, _take_back_wanted
    conn = _conn
    if conn is None:  # pragma: no cover - the handler checks
        return
    _pipe = _WRITING  # a handler that runs meanwhile only asks again (the loop below)
    try:
        with _send_lock:
            _take_back_locked(conn)
    except (OSError, EOFError):
        _take_back_wanted = False  # the parent is gone: the main loop finds out next
    finally:
        _pipe = _IDLE


def _take_back_locked(conn: Connection) -> None:
    global _take_back_wanted, _stopped
    while _take_back_wanted:
        _take_back_wanted = False
        skipped = [(SKIP, w[_W_KEY], w[_W_ATTEMPT]) for w in _pending]
        _pending.clear()
        # The parent sends whole messages, so one that has begun to arrive ends soon.
        woken = False  # a message for the event loop of `lanes`, which no longer sees it
        while not _stopped and conn.poll(0):
            batch = conn.recv()
            if batch is None:
                _stopped = woken = True
            elif type(batch) is tuple:  # (CANCEL, key), for `lanes`
                _controls.append(batch)
                woken = True
            else:
                skipped += [(SKIP, w[_W_KEY], w[_W_ATTEMPT]) for w in batch]
        if skipped:
            conn.send_bytes(pickle.dumps(skipped, pickle.HIGHEST_PROTOCOL))
        if woken and _waker is not None:  # the pipe is empty now: its reader will not fire
            _waker()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal past the first
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def _install_handlers() -> None:
    signal.signal(DRAIN_SIGNAL, _on_drain_signal)
    signal.siginterrupt(DRAIN_SIGNAL, False)
    signal.signal(TAKE_BACK_SIGNAL, _on_take_back_signal)
    signal.siginterrupt(TAKE_BACK_SIGNAL, False)


PROCESS_NAME = b"hyrex-executor"
"""What ``ps -o comm``, ``top`` and ``/proc/<pid>/comm`` show for an executor (Linux)."""


def executor_main(
    app: str,
    settings: Settings,
    conn: Connection,
    draining: bool,
    log_level: str,
    log_format: str,
    worker_id: uuid.UUID,
    async_concurrency: int = 1,
) -> None:
    """Entry point of an executor process."""
    global _draining, _conn
    lead_own_session()
    die_with_parent(PROCESS_NAME)
    # The parent decides when we stop; a Ctrl-C or a SIGTERM sent to the whole process group
    # must not kill a task halfway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _draining = _draining or draining
    # A forked executor inherits what importing the app in the parent installed.
    inherited = [signal.getsignal(DRAIN_SIGNAL), signal.getsignal(TAKE_BACK_SIGNAL)]
    _install_handlers()
    # a pending one arrives now (a take-back finds nothing to take yet)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {DRAIN_SIGNAL, TAKE_BACK_SIGNAL})
    from ..logs import configure_logging

    configure_logging(log_level, log_format)
    registry = load_registry(app)
    for signum, ours, before in (
        (DRAIN_SIGNAL, _on_drain_signal, inherited[0]),
        (TAKE_BACK_SIGNAL, _on_take_back_signal, inherited[1]),
    ):
        if signal.getsignal(signum) is not ours or callable(before):
            # Importing the app installed its own: without ours a stopping worker could not
            # hand back the jobs an executor has not started (they would run, or be
            # interrupted), nor take them back from behind a long task.
            log.warning(
                "drain_signal_handler_replaced",
                signal=_signal_name(signum),
                detail="importing the app installed its own handler; hyrex-like needs this "
                "signal to run executors cleanly and has put its handler back",
            )
    _install_handlers()
    registry.configure(**settings.model_dump())
    conn.send((READY, os.getpid()))
    _conn = conn
    Executor(registry, conn, worker_id, (log_level, log_format), async_concurrency).serve()
    # Nothing left to clean up but the pools a task may have opened; skipping the interpreter's
    # slow teardown makes a worker's shutdown (and every restart in tests) quicker.
    registry.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Executor:
    def __init__(
        self,
        registry: HyrexRegistry,
        conn: Connection,
        worker_id: uuid.UUID,
        logging_config: tuple[str, str] | None = None,
        width: int = 1,
    ) -> None:
        self.registry = registry
        self.conn = conn
        self.worker_id = worker_id
        self.log = log.bind(worker_id=str(worker_id))
        self.loop = asyncio.new_event_loop()
        self.logging_config = logging_config  # (level, format), to redo it on a new stderr
        self.streams = _StdStreams()
        self.width = width  # async tasks run at once (`lanes`); 1: one job at a time
        self.progress: ProgressOut = (
            ProgressOut(conn, _send_lock) if width == 1 else ProgressMany(conn, _send_lock)
        )
        # How a task's async on_error runs: to its end here; as a task of the running loop
        # when jobs run side by side.
        self.run_coroutine: Callable[[Any], Any] = self.loop.run_until_complete
        if registry.settings.tracing:  # (off: opentelemetry is never imported)
            from ..otel import traced_run

            self.run = traced_run(self.run)  # type: ignore[method-assign,assignment]

    def serve(self) -> None:
        if self.width > 1:
            from .lanes import Lanes

            self.loop.run_until_complete(Lanes(self).serve())
            return
        self._serve_one_at_a_time()

    def _serve_one_at_a_time(self) -> None:
        global _pipe
        conn = self.conn
        streams = self.streams
        pending = _pending
        while True:
            if not pending:
                if _stopped:
                    return
                _pipe = _RECEIVING
                try:
                    batch = conn.recv()
                except (EOFError, OSError):
                    return  # the parent is gone
                finally:
                    _pipe = _IDLE
                if batch is None:
                    return
                pending.extend(batch)
                continue
            try:
                wire = pending.popleft()  # started from here on: a take-back no longer sees it
            except IndexError:  # a take-back emptied it since the check above
                continue
            if _draining:
                result: tuple[Any, ...] = (SKIP, wire[_W_KEY], wire[_W_ATTEMPT])
            else:
                result = self.run(wire)
                if not streams.intact():
                    self._restore_streams(wire)
            # Each result leaves before the next job starts: holding results to send them in
            # groups would lose them, and re-run their tasks, if the next job crashed this
            # process.
            _pipe = _WRITING
            try:
                with _send_lock:
                    message = [result]
                    # plain pickle: Connection.send builds a ForkingPickler per message, which
                    # was a third of an executor's time per tiny task
                    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
            except OSError:
                return  # the parent is gone
            finally:
                _pipe = _IDLE
            if _take_back_wanted:  # asked for during the send
                _take_back()

    def run(self, wire: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run one job, given as sent (`Job.wire`): the `Job` itself, with its UUIDs, is built
        only if the task asks for its context or fails (~1 us saved per tiny task)."""
        key, task_name, attempt = wire[_W_KEY], wire[_W_NAME], wire[_W_ATTEMPT]
        definition = self.registry.get_task(task_name)
        started = time.time()
        if definition is None:  # claims filter by name, so only a changed app gets here
            return (
                ERR,
                key,
                attempt,
                started,
                time.time(),
                "TaskNotRegistered",
                f"task {task_name!r} is not registered in this worker's app",
                None,
                False,
            )
        progress = self.progress
        token = _set_context(
            _LazyContext(lambda: progress.track(self._context(Job.from_wire(wire))))
        )
        retryable = True
        try:
            try:
                payload = definition.load_payload(wire[_W_ARGS])
            except pydantic.ValidationError:
                retryable = False  # the stored args will not validate next time either
                raise
            value = definition.call(payload)
            if definition.is_async or asyncio.iscoroutine(value):
                value = self.loop.run_until_complete(value)
            try:
                result = definition.dump_result(value)
                last = progress.final(task_name, True, key)  # (its last progress report)
            except (PayloadNotSerializable, PayloadTooLarge):
                retryable = False
                raise
            if last is None:
                return (OK, key, attempt, started, time.time(), result)
            return (OK, key, attempt, started, time.time(), result, last)
        # Every BaseException: the executor ignores SIGINT and SIGTERM and its drain signal only
        # sets a flag, so a KeyboardInterrupt, a SystemExit, a CancelledError, a GeneratorExit
        # or a custom BaseException here was raised by the task. It fails the attempt; it must
        # not end the executor (the attempt would be "lost", its real error with it).
        except BaseException as exc:
            finished = time.time()
            error_type, message, tb = _describe_failure(exc)
            if not self.streams.intact():  # on_error and our log must be able to print
                self._restore_streams(wire)
            self._on_error(definition, exc, Job.from_wire(wire))
            failed = (ERR, key, attempt, started, finished, error_type, message, tb, retryable)
            last = progress.final(task_name, False, key)
            return failed if last is None else (*failed, last)
        finally:
            _reset_context(token)

    def _context(self, job: Job) -> HyrexContext:
        return _built(
            {
                "task_id": job.task_id,
                "task_name": job.task_name,
                "attempt_number": job.attempt,
                "max_retries": job.max_retries,
                "queue": job.queue,
                "priority": job.priority,
                "parent_id": job.parent_id,
                "root_id": job.root_id,
                "worker_id": self.worker_id,
                "is_local": False,
                "scheduled_for": job.scheduled_for,
            }
        )

    def _on_error(self, definition: TaskDefinition[Any, Any], exc: BaseException, job: Job) -> None:
        call_on_error(definition, exc, job, self.run_coroutine, self.log, contain=(BaseException,))

    def _restore_streams(self, wire: tuple[Any, ...]) -> None:
        repaired, new_stderr = self.streams.restore()
        if new_stderr and self.logging_config is not None:
            # structlog holds the stderr object it was configured with: the closed one
            from ..logs import configure_logging

            configure_logging(*self.logging_config)
            # a fresh proxy: `log` has cached the logger it made with the old configuration
            fresh = structlog.get_logger("hyrex_like.executor")
            self.log = fresh.bind(worker_id=str(self.worker_id))
        self.log.warning(
            "standard_streams_restored",
            task_id=str(uuid.UUID(bytes=wire[_W_KEY])),
            task_name=wire[_W_NAME],
            attempt=wire[_W_ATTEMPT],
            repaired=repaired,
            detail="the task left the executor's standard streams broken; they were put back "
            "for the tasks after it",
        )
