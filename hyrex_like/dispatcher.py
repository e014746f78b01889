"""The worker: one parent process that claims tasks and N executor processes that run them.

The parent owns the database connections, the signals and the executors. Its loop is short and
its steps are named methods (`_sync`, `_dispatch`, `_collect`, `_enforce_timeouts`, `_flush`,
`_maintain`); each step does what it can without blocking on the others, so a slow task, a dead
executor or a dead database never stops the loop.

Round trips per batch: one statement claims (and opens the run rows), one writes every finished
attempt. Results wait in memory while the database is away and are written when it is back; the
write is guarded (task still ours, same attempt), so writing twice is harmless.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg
import tenacity
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import redact_dsn
from .errors import (
    ConfigurationError,
    DatabaseError,
    ExecutorLost,
    HyrexLikeError,
    SchemaNotReady,
    TaskTimeout,
    WorkerError,
)
from .logs import LEVELS, get_logger
from .outages import URL_HINT, refusal
from .registry import HyrexRegistry, check_name
from .states import RunStatus, TaskStatus
from .store import ClaimedRow, FinishedRow, WorkerQueries
from .worker.executor import executor_main
from .worker.failures import call_on_error, describe_error
from .worker.processes import executor_exited, kill_executor_group, set_os_thread_name
from .worker.protocol import DRAIN_SIGNAL, ERR, OK, SKIP, Job

log = get_logger("hyrex_like.worker")

_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseError)

# Statuses on the per-task paths, looked up once and as cheap to compare as str literals: an
# attempt is recorded with a RunStatus member (compared by identity); counters and what the
# database returns (plain str) use the plain values.
_COMPLETED = RunStatus.COMPLETED
_INTERRUPTED = RunStatus.INTERRUPTED
_COMPLETED_STR = RunStatus.COMPLETED.value
_INTERRUPTED_STR = RunStatus.INTERRUPTED.value
_QUEUED_STR = TaskStatus.QUEUED.value
_FAILED_STR = TaskStatus.FAILED.value


MAX_PROCESSES = 512
"""The most executor processes a worker runs (``--processes``)."""


def default_processes(cpu_count: Callable[[], int | None] = os.cpu_count) -> int:
    """The default ``--processes``: one executor per CPU, at most `MAX_PROCESSES` (so a larger
    machine still starts with no flags); 1 when the count is unknown."""
    return max(1, min(cpu_count() or 1, MAX_PROCESSES))


class WorkerOptions(BaseModel):
    """How a worker runs. The CLI maps its flags onto these."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    queues: tuple[str, ...] = ()
    """Queues to serve; empty means every queue."""
    processes: int = Field(default_factory=default_processes, ge=1, le=MAX_PROCESSES)
    prefetch: int = Field(default=16, ge=1, le=10_000)
    """Jobs handed to an idle executor at once (raise it for many tiny tasks)."""
    grace_period: float = Field(default=30.0, ge=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    stale_after: float = Field(default=30.0, gt=0)
    """Seconds without a heartbeat after which a worker's running tasks are requeued."""
    poll_interval: float = Field(default=1.0, gt=0)
    startup_timeout: float = Field(default=15.0, ge=0)
    """How long to keep trying to reach the database at start before giving up; also how
    long a refusal for good (`outages.refusal`) met while running is retried before the
    worker stops (at start, a refusal stops it at once)."""
    log_level: str = "info"
    log_format: str = "console"

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # what `@hy.task(queue=...)` accepts: a worker for any other name would serve nothing
        return tuple(check_name("queue", q) for q in value)

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {value!r}")
        return value

    @field_validator("log_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError(f"log format must be 'console' or 'json', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_heartbeat(self) -> WorkerOptions:
        if self.stale_after <= self.heartbeat_interval:
            raise ValueError(
                f"stale_after ({self.stale_after:g}s) must be more than heartbeat_interval "
                f"({self.heartbeat_interval:g}s): other workers would declare this one lost "
                "between two of its heartbeats and run its tasks a second time"
            )
        return self


@dataclass
class _Executor:
    index: int
    process: Any  # a multiprocessing Process (forked or spawned)
    conn: mpc.Connection
    assigned: deque[Job] = field(default_factory=deque)
    head_started: float | None = None
    ready: bool = False
    # sizes of the batches sent and not fully answered: the first is running, the rest wait
    # unread in the pipe
    batches: deque[int] = field(default_factory=deque)
    inbox: bytearray = field(default_factory=bytearray)  # bytes read, not yet a whole message
    _sock: socket.socket | None = None

    def read_messages(self) -> list[Any]:
        """Every message the executor has sent so far, without blocking: one read for all of
        them (``recv`` per message cost a poll and two reads each)."""
        if self._sock is None:
            # The pipe is a socketpair: a socket view of its descriptor can read without
            # blocking (MSG_DONTWAIT) while sends keep the blocking descriptor.
            self._sock = socket.socket(fileno=os.dup(self.conn.fileno()))
            # socket() applies socket.setdefaulttimeout(), i.e. O_NONBLOCK on the descriptor
            # the pipe shares; sends to the executor must block.
            self._sock.setblocking(True)
        while True:
            try:
                chunk = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                break  # the executor is gone; _reap deals with it
            self.inbox += chunk
            if len(chunk) < 1 << 20:
                break
        out = []
        view = self.inbox
        pos = 0
        # multiprocessing's framing: a signed 4-byte big-endian length (-1: an 8-byte length
        # follows), then a pickle.
        while len(view) - pos >= 4:
            size = int.from_bytes(view[pos : pos + 4], "big", signed=True)
            start = pos + 4
            if size == -1:
                if len(view) - pos < 12:
                    break
                size = int.from_bytes(view[pos + 4 : pos + 12], "big")
                start = pos + 12
            if len(view) - start < size:
                break
            out.append(pickle.loads(view[start : start + size]))
            pos = start + size
        if pos:
            del self.inbox[:pos]
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.conn.close()


_CLAIM_MAX = 1_000  # rows per claim statement
_FIRST_CLAIM_MAX = 100  # until something was claimed: executors start on it ~15 ms sooner
_TOP_UP_BYTES = 16_384  # a top-up batch stays well under a pipe buffer (64 KiB on Linux)


@dataclass
class _Round:
    """One database round: what it was given, and what came of it."""

    db: psycopg.Connection[Any]
    giveback: list[Job]
    finished: list[FinishedRow]
    claim: int
    generation: int
    gave_back: bool = False
    returned: list[tuple[uuid.UUID, str, datetime, int]] | None = None  # None: not written
    claimed: list[ClaimedRow] | None = None
    error: BaseException | None = None
    future: Future[_Round] | None = None  # set while it runs on a database thread


class _DbThread:
    """A daemon thread that runs one call at a time for the loop and wakes it when done.

    Daemon, not a pool: a round blocked on a vanished server must not hold up the exit.
    """

    def __init__(self, wake: Callable[[], None], name: str) -> None:
        self._wake = wake
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._calls = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        future: Future[Any] = Future()
        self._calls.put((future, fn, args))
        return future

    def _serve(self) -> None:
        set_os_thread_name(self._name.encode())
        while True:
            future, fn, args = self._calls.get()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the loop, which decides
                future.set_exception(exc)
            self._wake()


_HANDLER_BACKLOG = 1_000  # on_error calls waiting for the handler thread, at most


class _HandlerThread:
    """One daemon thread for the on_error calls the parent makes (timeouts, lost executors),
    so a slow handler never holds up dispatch. Bounded: past `_HANDLER_BACKLOG` waiting calls,
    `submit` refuses. Daemon: a handler that never returns must not keep the worker alive."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], None]) -> bool:
        with self._idle:
            if self._pending >= _HANDLER_BACKLOG:
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


class _ForcedExit(BaseException):
    """Raised by the second SIGTERM/SIGINT to leave whatever the loop is blocked in."""


class Dispatcher:
    """Runs the tasks of ``registry`` (importable as ``app``) until told to stop."""

    def __init__(self, registry: HyrexRegistry, app: str, options: WorkerOptions | None = None):
        self.registry = registry
        self.app = app
        self.options = options or WorkerOptions()
        self.worker_id = uuid.uuid4()
        self.log = log.bind(worker_id=str(self.worker_id))
        self.task_names = sorted(registry.tasks)
        self.queues = list(self.options.queues)
        self.capacity = self.options.processes * self.options.prefetch
        self._mp = mp.get_context("spawn")
        self._executors: list[_Executor] = []
        self._ready: deque[Job] = deque()
        self._done: list[FinishedRow] = []
        self._giveback: list[Job] = []
        # Three connections: writes (and upkeep), claims, LISTEN. Writes and claims each run on
        # a thread of their own, so the loop never waits on a round trip and a claim never
        # waits behind a write.
        self._db: psycopg.Connection[Any] | None = None
        self._claim_db: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._writer = _DbThread(self._wake, "hyrex-writer")
        self._handlers = _HandlerThread(self.log)
        self._claimer = _DbThread(self._wake, "hyrex-claimer")
        # the rounds in flight, at most one of each
        self._writing: _Round | None = None
        self._claiming: _Round | None = None
        self._generation = 0  # bumped by every (re)connect; rounds carry the one they ran on
        self._db_failures = 0
        self._connection_lost = False
        self._next_db_attempt = 0.0
        self._claim_wanted = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_full_rescue = 0.0  # see WorkerQueries.rescue
        self._retry_at = math.inf
        self._stopping = False
        self._stop_requested = False
        self._grace_deadline = math.inf
        self._signals = 0
        self._startup_failures = 0
        self._started = False  # connected once: a refusal from now on is waited out a while
        self._refused_since: float | None = None  # when reconnects began to be refused
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._debug = self.options.log_level == "debug"
        self._info = self.options.log_level in ("debug", "info")
        self._old_handlers: dict[int, Any] = {}
        self.stats = {
            "claimed": 0,
            _COMPLETED_STR: 0,
            "failed_attempts": 0,
            _INTERRUPTED_STR: 0,  # by the shutdown: requeued, not the task's fault
            "given_back": 0,  # claimed, never started: handed back at shutdown
            RunStatus.TIMED_OUT.value: 0,
            RunStatus.LOST.value: 0,
            "rescued": 0,
            "executor_restarts": 0,
            "db_reconnects": 0,
        }

    # ---------------------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`). Returns the process exit code."""
        if not self.task_names:
            raise WorkerError(f"{self.app!r} has no registered tasks; nothing to run")
        self._install_signals()
        try:
            try:
                try:
                    self._start()
                except BaseException:
                    for ex in self._executors:
                        self._kill(ex)
                    raise
                while not self._finished():
                    self._step()
                return self._shutdown()
            except _ForcedExit:
                return self._forced_shutdown()
            except ConfigurationError:
                self._abandon()
                raise
        finally:
            self._restore_signals()
            self._wake_r.close()
            self._wake_w.close()

    def request_stop(self) -> None:
        """Begin a graceful stop, as SIGTERM does (safe from another thread)."""
        self._stop_requested = True
        self._wake()

    def _start(self) -> None:
        store = self.registry.store
        deadline = time.monotonic() + self.options.startup_timeout
        # Executors first: they start while the parent checks the schema and connects.
        fork = self._can_fork()
        for index in range(self.options.processes):
            self._executors.append(self._spawn(index, fork=fork))
        self._ensure_schema(deadline)
        while self._connect() is None:
            if time.monotonic() >= deadline:
                raise DatabaseError(
                    f"cannot reach the database at {redact_dsn(store.url())} "
                    f"after {self.options.startup_timeout:g}s"
                )
            time.sleep(max(0.0, min(self._next_db_attempt, deadline) - time.monotonic()))
        self._started = True
        self.log.info(
            "worker_started",
            app=self.app,
            queues=self.queues or "*",
            tasks=self.task_names,
            processes=self.options.processes,
            prefetch=self.options.prefetch,
            database=redact_dsn(store.url()),
            schema=store.schema,
        )

    def _ensure_schema(self, deadline: float) -> None:
        """Check (or create) the schema, waiting up to the start-up timeout for the database."""
        delay = 0.1
        while True:
            try:
                self.registry.store.ensure_schema()
                return
            except SchemaNotReady:
                raise  # a clear, fatal start-up error: waiting will not fix it
            except ConfigurationError as exc:  # a malformed URL, no database allowed...
                if "HYREX_LIKE_DATABASE_URL" in str(exc):
                    raise
                raise ConfigurationError(f"{exc}; {URL_HINT}") from None
            except (DatabaseError, psycopg.OperationalError) as exc:
                why = refusal(exc)
                if why is not None:
                    raise self._refused(why) from None
                if time.monotonic() + delay >= deadline:
                    raise DatabaseError(
                        f"cannot reach the database at {redact_dsn(self.registry.store.url())} "
                        f"after {self.options.startup_timeout:g}s: {_describe(exc)}"
                    ) from None
                self.log.warning("database_unavailable", error=_describe(exc), retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _refused(self, why: str, lasted: float | None = None) -> ConfigurationError:
        """The error for a database that refuses this worker for good: one line, no password."""
        url = self.registry.settings.database_url  # None: the embedded database
        where = f"the database at {redact_dsn(url)}" if url else "the embedded database"
        during = "" if lasted is None else f" for {lasted:.0f}s while it was running"
        return ConfigurationError(f"{where} refused this worker{during}: {why}; {URL_HINT}")

    def _still_refused(self, why: str) -> None:
        """A reconnect refused while running: retried (with the usual backoff) until the refusal
        has lasted --startup-timeout seconds, then the worker stops (`run`: exit code 2).

        At start a refusal stops the worker at once: the URL is wrong. Once it has run, the
        same errors also come from faults that heal: an LDAP, RADIUS or Kerberos server that
        is briefly away ("LDAP authentication failed"), a database dropped and created again,
        a role whose LOGIN is taken away and given back. Stopping at once would stop a whole
        fleet, and lose the results not yet written. The time counts from the first of an
        unbroken run of refusals: a successful reconnect or an outage (which is waited out
        for as long as it lasts) starts it again."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        lasted = now - self._refused_since
        bound = self.options.startup_timeout
        if lasted >= bound:
            raise self._refused(why, lasted)
        # the next try no later than the bound, so the worker stops when it says it will
        self._next_db_attempt = min(self._next_db_attempt, self._refused_since + bound)
        self.log.error(
            "database_refused",
            error=why,
            refused_for=round(lasted, 1),
            retry_in=round(max(0.0, self._next_db_attempt - now), 2),
            stops_in=round(bound - lasted, 1),
            hint=f"{URL_HINT}; the worker retries, and stops (exit code 2) if the refusal "
            f"lasts --startup-timeout ({bound:g}s)",
        )

    def _step(self) -> None:
        if self._stop_requested and not self._stopping:
            self._begin_stop()
        self._sync()
        self._dispatch()
        self._wait()
        self._collect()
        self._reap()
        self._enforce_timeouts()
        self._maintain()

    def _finished(self) -> bool:
        if not self._stopping:
            return False
        busy = any(ex.assigned for ex in self._executors) or self._claiming is not None
        return not busy or time.monotonic() >= self._grace_deadline

    def _begin_stop(self) -> None:
        self._stopping = True
        for ex in self._executors:  # they hand back what they have not started
            self._signal_drain(ex)
        self._giveback.extend(self._ready)
        self._ready.clear()
        self._grace_deadline = time.monotonic() + self.options.grace_period
        running = sum(1 for ex in self._executors if ex.assigned)
        self.log.info("worker_stopping", running=running, grace_period=self.options.grace_period)

    def _shutdown(self) -> int:
        """After the grace period: requeue what still runs, write everything, stop executors."""
        self._interrupt_executors("the worker shut down before this attempt finished")
        self._stop_executors()
        deadline = time.monotonic() + max(10.0, self.options.grace_period)
        written = self._final_flush(deadline=deadline)
        # on_error calls still running get what is left of the grace period
        self._drain_handlers(self._grace_deadline)
        self.log.info("worker_stopped", clean=written, **self.stats)
        return 0

    def _interrupt_executors(self, why: str) -> None:
        """Kill executors still busy: their running attempt is requeued as interrupted (not the
        task's fault, so not counted as a failure), the jobs they had not started go back."""
        for ex in self._executors:
            if ex.assigned:
                self._kill(ex)
                head = ex.assigned.popleft()
                self._record(head, _INTERRUPTED, True, None, "WorkerShutdown", why, None)
                self.log.warning(
                    "task_interrupted",
                    task_id=str(head.task_id),
                    task_name=head.task_name,
                    attempt=head.attempt,
                    reason=why,
                )
                self._giveback.extend(ex.assigned)
                ex.assigned.clear()

    def _abandon(self) -> None:
        """Stop without the database, which refuses us for good (`outages.refusal`): the tasks
        this worker holds stay marked as running until another worker's rescuer requeues them
        (its heartbeat is stale after --stale-after seconds).

        Results already in hand are written first if a connection still works; those that
        cannot be are logged apart, by task id: these tasks finished, and will run again."""
        if self._started:
            self._collect()  # results the executors sent before they are killed
        for ex in self._executors:
            self._kill(ex)
        if self._started:
            self._write_what_is_left()
        unwritten = [r.task_id for r in self._done]
        if self._writing is not None:  # a write still in flight may yet land
            unwritten += [r.task_id for r in self._writing.finished]
        if unwritten:
            self.log.error(
                "worker_results_lost",
                tasks=len(unwritten),
                task_ids=[str(i) for i in unwritten],
                hint="these tasks finished but their outcome could not be written; other "
                "workers run them again once this worker's heartbeat is stale",
            )
        lost = set(unwritten)
        held = [i for i in self._known_task_ids() if i not in lost]
        if held:
            self.log.error(
                "worker_abandoned_tasks",
                tasks=len(held),
                task_ids=[str(i) for i in held],
                hint="other workers requeue these tasks once this worker's heartbeat is stale",
            )

    def _write_what_is_left(self) -> None:
        """On the way out without reconnecting: take in the rounds in flight, then write the
        results and hand back the unstarted tasks through the writer's connection, if it is
        still open."""
        self._settle(1.0)
        db = self._db
        if db is None or db.closed or not (self._done or self._giveback):
            return
        job = self._run_round(_Round(db, self._giveback, self._done, 0, self._generation))
        self._giveback, self._done = [], []
        self._apply(job)

    def _forced_shutdown(self) -> int:
        # A third signal now ends the process at once, as a user pressing Ctrl-C again expects.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        self.log.warning("worker_forced_stop")
        self._interrupt_executors("the worker was stopped at once (second signal)")
        for ex in self._executors:
            self._kill(ex)
        self._giveback.extend(self._ready)
        self._ready.clear()
        # One quick try; whatever is not written is requeued by other workers once our
        # heartbeat is stale.
        try:
            self._final_flush(deadline=time.monotonic() + 1.0)
        except Exception:  # pragma: no cover - best effort on the way out
            pass
        self._drain_handlers(time.monotonic())
        self.log.info("worker_stopped", clean=False, **self.stats)
        return 1

    def _final_flush(self, deadline: float) -> bool:
        while True:
            self._flush(timeout=max(0.0, deadline - time.monotonic()))
            idle = self._writing is None and self._claiming is None
            if not self._done and not self._giveback and idle:
                break
            if time.monotonic() >= deadline:
                self.log.error(
                    "worker_unwritten_results",
                    results=len(self._done),
                    unstarted=len(self._giveback),
                    hint="other workers requeue these tasks once this worker's heartbeat is stale",
                )
                return False
            time.sleep(0.05)
        db = self._ensure_db()
        if db is not None:
            try:
                WorkerQueries.stop(db, self.worker_id)
            except _DB_ERRORS:
                pass
        self._close_db()
        return True

    # ---------------------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        # SIGHUP too: closing the terminal a worker runs in stops it gracefully (its executors
        # lead their own sessions, so the hang-up does not reach them). Only the main thread
        # may set handlers: a worker run on another thread is stopped with request_stop.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            raise _ForcedExit()
        self._stop_requested = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # ---------------------------------------------------------------------------- database

    def _connect(self) -> psycopg.Connection[Any] | None:
        """(Re)connect the three connections, with tenacity retrying inside a short window."""
        if time.monotonic() < self._next_db_attempt:
            return None
        store = self.registry.store
        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_delay(1.0),
                wait=tenacity.wait_exponential_jitter(initial=0.05, max=0.5),
                retry=tenacity.retry_if_exception(
                    lambda exc: isinstance(exc, DatabaseError) and refusal(exc) is None
                ),
                reraise=True,
            ):
                with attempt:
                    conns = []
                    try:
                        for _ in range(3):
                            conns.append(store.connect(worker=True))
                    except BaseException:
                        for conn in conns:
                            conn.close()
                        raise
            db, claim_db, listen = conns
            WorkerQueries.listen(listen, store.channel)
            self._register(db)
            # A claim whose reply was lost with the old connection left tasks marked as ours.
            known = self._known_task_ids()
            returned = WorkerQueries.give_back_unknown(db, self.worker_id, known)
        except ConfigurationError:
            raise
        except (*_DB_ERRORS, OSError) as exc:
            for conn in conns:
                conn.close()
            why = refusal(exc)
            if why is not None and not self._started:  # refused at start: stop (see run)
                raise self._refused(why) from None
            self._db_failures += 1
            delay = min(0.1 * 2 ** min(self._db_failures, 6), 5.0)
            self._next_db_attempt = time.monotonic() + delay
            if why is not None:
                self._still_refused(why)  # raises once the refusal has lasted too long
            else:
                self._refused_since = None  # an outage: waited out, however long it lasts
                self.log.warning(
                    "database_unavailable", error=_describe(exc), retry_in=round(delay, 2)
                )
            return None
        if self._db_failures or self._connection_lost:
            self.stats["db_reconnects"] += 1
            self.log.info(
                "database_reconnected", after_failures=self._db_failures, returned_unknown=returned
            )
        self._db_failures = 0
        self._connection_lost = False
        self._refused_since = None
        self._db, self._claim_db, self._listen = db, claim_db, listen
        self._generation += 1
        self._claim_wanted = True
        return db

    def _register(self, db: psycopg.Connection[Any]) -> None:
        WorkerQueries.register(
            db,
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.task_names,
            self.options.processes,
        )

    def _ensure_db(self) -> psycopg.Connection[Any] | None:
        if self._db is not None and not self._db.closed:
            return self._db
        if self._claiming is not None:
            # Not before the claim in flight has returned: reconnecting hands back the running
            # tasks we do not know we hold, and that claim's rows may be among them. (TCP
            # keepalives bound how long a claim on a dead link can take.)
            return None
        self._close_db()
        return self._connect()

    def _db_lost(self, exc: BaseException) -> None:
        self.log.warning("database_connection_lost", error=_describe(exc))
        self._connection_lost = True
        self._close_db()
        self._next_db_attempt = time.monotonic() + 0.05

    def _close_db(self) -> None:
        """Drop the connections. One a round is still using is closed by that round's thread
        once the round returns (closing it under a statement in flight is not safe); the
        round's outcome is still taken in, but its error no longer resets the new ones."""
        self._settle(timeout=0.0)
        busy = {
            id(job.db): thread
            for job, thread in ((self._writing, self._writer), (self._claiming, self._claimer))
            if job is not None
        }
        for conn in (self._db, self._claim_db, self._listen):
            if conn is None:
                continue
            if id(conn) in busy:
                busy[id(conn)].submit(_close_quietly, conn)
            else:
                _close_quietly(conn)
        self._db = self._claim_db = self._listen = None

    def _known_task_ids(self) -> list[uuid.UUID]:
        ids = [j.task_id for j in self._ready] + [j.task_id for j in self._giveback]
        ids += [r.task_id for r in self._done]
        if self._writing is not None:  # a write that may still land (or be retried)
            ids += [r.task_id for r in self._writing.finished]
            ids += [j.task_id for j in self._writing.giveback]
        for ex in self._executors:
            ids += [j.task_id for j in ex.assigned]
        return ids

    def _in_flight(self) -> int:
        """Tasks this worker holds as running in the database: claimed and not yet started,
        running, and finished or handed back but not yet written."""
        return (
            len(self._ready)
            + sum(len(ex.assigned) for ex in self._executors)
            + len(self._done)
            + len(self._giveback)
            + (len(self._writing.giveback) + len(self._writing.finished) if self._writing else 0)
        )

    # ---------------------------------------------------------------------------- claiming

    def _sync(self) -> None:
        """Take in the database rounds that ended; start the next write (what finished, what
        goes back unstarted) and the next claim, each on its own thread and connection.

        One write and one claim are in flight at most. Meanwhile the loop goes on collecting
        results and feeding executors, so each round's batch grows with the load.
        """
        self._settle(timeout=0.0)
        if time.monotonic() >= self._retry_at:
            self._claim_wanted = True
            self._retry_at = math.inf
        beat_due = time.monotonic() >= self._next_heartbeat  # the writer's connection is needed
        if self._writing is None and (self._done or self._giveback) and not beat_due:
            db = self._ensure_db()
            if db is not None:
                self._writing = self._start_round(self._writer, db, self._giveback, self._done, 0)
                self._giveback, self._done = [], []
        if self._claiming is None:
            claim = self._claim_size()
            if claim and self._ensure_db() is not None and self._claim_db is not None:
                # Cleared now, not when the claim ends: a NOTIFY that arrives while it runs may
                # be for a task its snapshot missed, and must bring another claim.
                self._claim_wanted = False
                self._claiming = self._start_round(self._claimer, self._claim_db, [], [], claim)

    def _start_round(
        self,
        thread: _DbThread,
        db: psycopg.Connection[Any],
        giveback: list[Job],
        finished: list[FinishedRow],
        claim: int,
    ) -> _Round:
        job = _Round(db, giveback, finished, claim, self._generation)
        job.future = thread.submit(self._run_round, job)
        return job

    def _claim_size(self) -> int:
        """How many tasks to claim now (0: not now).

        Small claims cost a round trip each: while executors have plenty queued, wait until a
        quarter of the capacity is free; claim whatever fits when they are about to run dry.
        """
        free = self.capacity - self._in_flight()
        if not self._claim_wanted or self._stopping or free <= 0:
            return 0
        unstarted = len(self._ready) + sum(max(0, len(ex.assigned) - 1) for ex in self._executors)
        if free * 4 >= self.capacity or unstarted < self.options.processes * 2:
            # A claim is one statement: past ~1,000 rows it takes long enough (~20 ms here)
            # that idle executors wait for it; the next claim follows at once.
            return min(free, _CLAIM_MAX if self.stats["claimed"] else _FIRST_CLAIM_MAX)
        return 0

    def _run_round(self, job: _Round) -> _Round:
        """On the database thread: the statements of one round, in order, each recorded as
        done only once it succeeded (what did not is retried by a later round)."""
        try:
            if job.giveback:
                items = [(j.task_id, j.attempt) for j in job.giveback]
                WorkerQueries.give_back(job.db, self.worker_id, items)
                job.gave_back = True
            if job.finished:
                job.returned = self._write_finished(job.db, job.finished)
            if job.claim:
                job.claimed = WorkerQueries.claim(
                    job.db, self.worker_id, self.task_names, self.queues, job.claim
                )
        except _DB_ERRORS as exc:
            job.error = exc
        return job

    def _settle(self, timeout: float, write: bool = True, claim: bool = True) -> bool:
        """Take in the rounds in flight (the write, the claim or both) that have ended, waiting
        up to ``timeout`` seconds for them. False if one is still running."""
        deadline = time.monotonic() + timeout
        if write and self._writing is not None and _wait_for(self._writing, deadline):
            job, self._writing = self._writing, None
            self._apply(job)
        if claim and self._claiming is not None and _wait_for(self._claiming, deadline):
            job, self._claiming = self._claiming, None
            self._apply(job)
        return not (write and self._writing) and not (claim and self._claiming)

    def _apply(self, job: _Round) -> None:
        if job.giveback and not job.gave_back:
            self._giveback = job.giveback + self._giveback
        elif job.giveback:  # only a stopping worker gives tasks back
            self.stats["given_back"] += len(job.giveback)
            self.log.info(
                "tasks_given_back",
                count=len(job.giveback),
                task_ids=[str(j.task_id) for j in job.giveback],
                reason="claimed but not started before the shutdown; queued again as they were",
            )
        if job.returned is None:
            self._done = job.finished + self._done
        elif job.finished:
            self._after_write(job.finished, job.returned)
        if job.claimed is not None:
            self._take(job.claimed, job.claim)
        elif job.claim:
            self._claim_wanted = True  # the claim failed: what it was for is still waiting
        # A write that failed on connections replaced since must not reset the new ones (its
        # rows are back in _done). A claim never outlives its connections: see _ensure_db.
        if job.error is not None and job.generation == self._generation:
            self._db_lost(job.error)

    def _take(self, rows: list[ClaimedRow], asked: int) -> None:
        if len(rows) == asked:  # a full batch means more may be waiting
            self._claim_wanted = True
        target = self._giveback if self._stopping else self._ready  # a claim that landed late
        for row in rows:
            job = Job(
                row.id,
                row.task_name,
                row.queue,
                row.priority,
                row.args,
                row.attempt,
                row.max_retries,
                row.timeout_seconds,
                row.parent_id,
                row.root_id,
            )
            target.append(job)
            if self._debug:
                self.log.debug(
                    "task_claimed",
                    task_id=str(job.task_id),
                    task_name=job.task_name,
                    attempt=job.attempt,
                    queue=job.queue,
                )
        self.stats["claimed"] += len(rows)

    def _dispatch(self) -> None:
        """Hand ready jobs to executors: a batch to each idle one, spread evenly, and a top-up
        to a busy one whose batch is half done, so it never waits for the parent's round trips.
        """
        if not self._ready:
            return
        prefetch = self.options.prefetch
        open_ = [
            ex
            for ex in self._executors
            if ex.ready
            and (
                not ex.assigned
                # At most one unread batch may sit in the pipe, and a small one, so a send
                # can never block on an executor busy with a long task.
                or (len(ex.batches) == 1 and len(ex.assigned) <= prefetch // 2)
            )
        ]
        if not open_:
            return
        share = max(1, min(prefetch, math.ceil(len(self._ready) / len(open_))))
        for ex in sorted(open_, key=lambda e: len(e.assigned)):
            if not self._ready:
                break
            room = min(share, prefetch - len(ex.assigned) if ex.assigned else prefetch)
            batch: list[Job] = []
            size = 0
            while self._ready and len(batch) < room:
                if ex.assigned and batch and size + len(self._ready[0].args) > _TOP_UP_BYTES:
                    break
                job = self._ready.popleft()
                size += len(job.args)
                batch.append(job)
            if ex.assigned and size > _TOP_UP_BYTES:  # one big job: wait until it is idle
                self._ready.extendleft(reversed(batch))
                continue
            if not ex.assigned:
                ex.head_started = time.monotonic()
            ex.assigned.extend(batch)
            ex.batches.append(len(batch))
            try:
                ex.conn.send_bytes(
                    pickle.dumps([job.wire() for job in batch], pickle.HIGHEST_PROTOCOL)
                )
            except OSError:
                pass  # the executor died; _reap hands its jobs on
            if self._debug:
                for job in batch:
                    self.log.debug(
                        "task_started",
                        task_id=str(job.task_id),
                        task_name=job.task_name,
                        attempt=job.attempt,
                        executor=ex.process.pid,
                    )

    # ---------------------------------------------------------------------------- waiting

    def _wait(self) -> None:
        timeout = self._wait_timeout()
        objects: list[Any] = [self._wake_r]
        for ex in self._executors:
            objects.append(ex.conn)
            objects.append(ex.process.sentinel)
        if self._listen is not None and not self._listen.closed:
            objects.append(self._listen.fileno())
        ready = mpc.wait(objects, timeout)
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        if self._listen is not None and self._listen.fileno() in ready:
            try:
                for _ in self._listen.notifies(timeout=0):
                    self._claim_wanted = True
            except _DB_ERRORS as exc:
                self._db_lost(exc)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        if self._stop_requested and not self._stopping:
            return 0.0
        # A due heartbeat waits for the write in flight (it needs that connection), whose end
        # wakes the loop: counting it here would spin the loop until then.
        deadlines = [self._retry_at if self._writing else min(self._next_heartbeat, self._retry_at)]
        if not self._stopping:
            deadlines.append(self._next_poll)
        else:
            deadlines.append(self._grace_deadline)
        # (a round in flight wakes the loop when it ends)
        if (self._writing is None and (self._done or self._giveback)) or (
            self._claiming is None and self._claim_size()
        ):
            deadlines.append(now if self._db is not None else self._next_db_attempt)
        for ex in self._executors:
            if ex.assigned and ex.head_started is not None and ex.assigned[0].timeout:
                deadlines.append(ex.head_started + ex.assigned[0].timeout)
        return max(0.0, min(min(deadlines) - now, 1.0))

    # ---------------------------------------------------------------------------- results

    def _collect(self) -> None:
        for ex in self._executors:
            self._drain_pipe(ex)

    def _drain_pipe(self, ex: _Executor) -> None:
        try:
            for msg in ex.read_messages():
                if isinstance(msg, list):
                    for result in msg:
                        self._on_result(ex, result)
                elif msg[0] == "ready":
                    ex.ready = True
                    self._startup_failures = 0
        except (EOFError, OSError):
            pass  # dead: _reap deals with it

    def _on_result(self, ex: _Executor, msg: tuple[Any, ...]) -> None:
        job = ex.assigned.popleft()
        if job.task_id.bytes != msg[1]:  # pragma: no cover - would be a protocol bug
            raise WorkerError(f"executor answered for {msg[1]!r} while running {job.task_id}")
        ex.batches[0] -= 1
        if not ex.batches[0]:
            ex.batches.popleft()
        ex.head_started = time.monotonic() if ex.assigned else None
        kind = msg[0]
        if kind == OK:
            self._record(job, _COMPLETED, True, msg[5], None, None, None, msg[3], msg[4])
        elif kind == ERR:
            _, _, _, started, finished, etype, emsg, tb, retryable = msg
            self._record(job, RunStatus.FAILED, retryable, None, etype, emsg, tb, started, finished)
        elif kind == SKIP:
            self._giveback.append(job)

    def _record(
        self,
        job: Job,
        status: RunStatus,
        retryable: bool,
        result: str | None,
        error_type: str | None,
        error_message: str | None,
        tb: str | None,
        started: float | None = None,
        finished: float | None = None,
    ) -> None:
        self._done.append(
            FinishedRow(
                job.task_id,
                job.task_name,
                job.attempt,
                status,
                retryable,
                result,
                error_type,
                error_message,
                tb,
                started,
                finished if finished is not None else time.time(),
            )
        )
        if status is _COMPLETED:
            self.stats[_COMPLETED_STR] += 1
        elif status is _INTERRUPTED:
            self.stats[_INTERRUPTED_STR] += 1
        else:
            self.stats["failed_attempts"] += 1

    # ---------------------------------------------------------------------------- executors

    def _can_fork(self) -> bool:
        """Fork the first executors, rather than spawn them, when that is safe.

        A spawned executor is a fresh interpreter that imports the library and the app again
        (~0.25 s); a forked one starts at once. Forking is safe only before the parent holds a
        connection or a second thread, so it is used for the executors started with the
        worker and nowhere else: replacements (after a crash or a timeout) are spawned.
        """
        return (
            "fork" in mp.get_all_start_methods()
            and threading.active_count() == 1
            and self.registry.store.idle()
        )

    def _spawn(self, index: int, *, fork: bool = False) -> _Executor:
        ctx = mp.get_context("fork") if fork else self._mp
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        settings = self.registry.settings.model_copy(
            update={"database_url": self.registry.store.url(), "auto_migrate": False}
        )
        args: tuple[Any, ...] = (
            self.app,
            settings,
            child_conn,
            self._stopping,
            self.options.log_level,
            self.options.log_format,
            self.worker_id,
        )
        if fork:
            # A forked child inherits every descriptor: close the parent's ends of the other
            # executors' pipes, so each pipe's far end closes when the parent's does.
            inherited: list[Any] = [*self._executors, parent_conn]
            target: Any = _forked_executor
            args = (inherited, *args)
        else:
            target = executor_main
        process = ctx.Process(
            target=target, args=args, name=f"hyrex-like-executor-{index}", daemon=True
        )
        # Starting a process reaps every dead child multiprocessing knows: the group of an
        # executor that died meanwhile is killed first, while its id is still its own.
        self._kill_exited_groups()
        # The child inherits the blocked signal and unblocks it once its handler is in place:
        # a drain signal sent while it starts waits for it instead of killing it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {DRAIN_SIGNAL})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child_conn.close()
        return _Executor(index, process, parent_conn)

    @staticmethod
    def _signal_drain(ex: _Executor) -> None:
        if not executor_exited(ex.process):  # (not reaped here: _reap kills its group first)
            try:
                os.kill(ex.process.pid, DRAIN_SIGNAL)
            except ProcessLookupError:
                pass  # it died; _reap deals with that

    def _kill(self, ex: _Executor) -> None:
        """Kill an executor with its process group (what its tasks started), then reap it.
        Again on one already killed and reaped: nothing is sent (see `kill_executor_group`)."""
        kill_executor_group(ex.process)
        ex.process.join(5)
        ex.close()

    def _kill_exited_groups(self) -> None:
        """Kill the group of every executor that has exited and is not reaped yet (a ``waitid``
        each; only before an executor is started, never per task)."""
        for ex in self._executors:
            if executor_exited(ex.process):
                kill_executor_group(ex.process)

    def _reap(self) -> None:
        """Replace dead executors; their running attempt is lost, the rest go to others."""
        for i, ex in enumerate(self._executors):
            if not executor_exited(ex.process):
                continue
            kill_executor_group(ex.process)  # what its tasks left running, before the reap
            self._drain_pipe(ex)  # results it sent before dying still count
            code = ex.process.exitcode
            if not ex.ready:
                self._startup_failures += 1
                if self._startup_failures > 3:
                    raise WorkerError(
                        f"executor processes keep dying at start (exit code {code}); "
                        f"check that {self.app!r} imports cleanly in a fresh interpreter"
                    )
            if ex.assigned:
                head = ex.assigned.popleft()
                why = (
                    f"executor process {ex.process.pid} died (signal {-code})"
                    if code < 0
                    else f"executor process {ex.process.pid} exited with code {code}"
                )
                self.stats[RunStatus.LOST.value] += 1
                self._record(head, RunStatus.LOST, True, None, "ExecutorLost", why, None)
                self.log.warning(
                    "task_lost",
                    task_id=str(head.task_id),
                    task_name=head.task_name,
                    attempt=head.attempt,
                    reason=why,
                )
                self._call_on_error(head, ExecutorLost(why))
                self._requeue_local(ex.assigned)
            ex.close()
            self.stats["executor_restarts"] += 1
            self._executors[i] = self._spawn(ex.index)
            self.log.info("executor_restarted", executor=ex.index, exit_code=code)

    def _requeue_local(self, jobs: deque[Job]) -> None:
        """Jobs an executor never started: run them elsewhere (or give back if stopping)."""
        if self._stopping:
            self._giveback.extend(jobs)
        else:
            self._ready.extendleft(reversed(jobs))
        jobs.clear()

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for i, ex in enumerate(self._executors):
            if not ex.assigned or ex.head_started is None:
                continue
            head = ex.assigned[0]
            if not head.timeout or now - ex.head_started <= head.timeout:
                continue
            self._drain_pipe(ex)  # it may have just finished
            if not ex.assigned or ex.assigned[0] is not head:
                continue
            self._kill(ex)
            ex.assigned.popleft()
            why = f"attempt ran past its timeout of {head.timeout:g}s; its executor was killed"
            self.stats[RunStatus.TIMED_OUT.value] += 1
            self._record(head, RunStatus.TIMED_OUT, True, None, "TaskTimeout", why, None)
            self.log.warning(
                "task_timed_out",
                task_id=str(head.task_id),
                task_name=head.task_name,
                attempt=head.attempt,
                timeout=head.timeout,
            )
            self._call_on_error(head, TaskTimeout(why))
            self._requeue_local(ex.assigned)
            self.stats["executor_restarts"] += 1
            self._executors[i] = self._spawn(ex.index)

    def _call_on_error(self, job: Job, exc: HyrexLikeError) -> None:
        """The task's on_error for an attempt the worker ended (timeout, executor lost), on the
        handler thread: user code, however slow, must not hold up the loop."""
        definition = self.registry.get_task(job.task_name)
        if definition is None or definition.config.on_error is None:
            return
        if not self._handlers.submit(
            lambda: call_on_error(definition, exc, job, asyncio.run, self.log)
        ):
            self.log.error(
                "on_error_skipped",
                task_id=str(job.task_id),
                task_name=job.task_name,
                attempt=job.attempt,
                reason=f"{_HANDLER_BACKLOG} on_error calls are already waiting for the handler "
                "thread; a handler this slow needs fixing",
            )

    def _drain_handlers(self, deadline: float) -> None:
        left = self._handlers.drain(deadline)
        if left:
            self.log.error(
                "on_error_unfinished",
                calls=left,
                hint="on_error handlers still running when the worker stopped were cut short",
            )

    def _stop_executors(self) -> None:
        for ex in self._executors:
            try:
                ex.conn.send(None)
            except OSError:
                pass
        # Wait for them to exit without reaping them (a join would): the group of an exited
        # executor, with whatever its tasks left running, is killed while its id is its own.
        deadline = time.monotonic() + 5.0
        running = [ex.process.sentinel for ex in self._executors]
        while running and time.monotonic() < deadline:
            for sentinel in mpc.wait(running, max(0.0, deadline - time.monotonic())):
                running.remove(sentinel)
        for ex in self._executors:
            self._kill(ex)

    # ---------------------------------------------------------------------------- writing

    def _flush(self, timeout: float) -> None:
        """Write what finished and hand back what never started, now (used on the way out)."""
        self._settle(0.0, write=False)  # a claim's rows go back (see _take)
        if not self._settle(timeout, claim=False):
            return
        if not self._done and not self._giveback:
            return
        db = self._ensure_db()
        if db is None:
            return
        job = self._run_round(_Round(db, self._giveback, self._done, 0, self._generation))
        self._giveback, self._done = [], []
        self._apply(job)

    def _write_finished(
        self, db: psycopg.Connection[Any], rows: list[FinishedRow]
    ) -> list[tuple[uuid.UUID, str, datetime, int]]:
        try:
            return WorkerQueries.finish(db, self.worker_id, rows)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection, not the rows: keep them all for the next try
        except psycopg.Error as exc:
            # One row the database refuses must not block the others: isolate it.
            if len(rows) == 1:
                row = rows[0]
                self.log.error(
                    "task_result_rejected", task_id=str(row.task_id), error=_describe(exc)
                )
                fixed = FinishedRow(
                    row.task_id,
                    row.task_name,
                    row.attempt,
                    RunStatus.FAILED,
                    False,
                    None,
                    "ResultRejected",
                    f"the database rejected this attempt's outcome: {_describe(exc)}",
                    row.traceback,
                    row.started_at,
                    row.finished_at,
                )
                return WorkerQueries.finish(db, self.worker_id, [fixed])
            out: list[tuple[uuid.UUID, str, datetime, int]] = []
            for row in rows:
                out += self._write_finished(db, [row])
            return out

    def _after_write(
        self, rows: Sequence[FinishedRow], returned: list[tuple[uuid.UUID, str, datetime, int]]
    ) -> None:
        now_wall = datetime.now(UTC)
        by_id = {r.task_id: r for r in rows}
        for task_id, status, run_after, attempts in returned:
            row = by_id.get(task_id)
            if status == _QUEUED_STR:
                delay = (run_after - now_wall).total_seconds()
                self._retry_at = min(self._retry_at, time.monotonic() + max(0.0, delay))
                if row is not None and row.status is _INTERRUPTED:
                    self.log.info(
                        "task_requeued",
                        task_id=str(task_id),
                        task_name=row.task_name,
                        attempt=row.attempt,
                        reason="interrupted by the shutdown; this attempt does not count",
                    )
                elif row is not None:
                    self.log.warning(
                        "task_retry_scheduled",
                        task_id=str(task_id),
                        task_name=row.task_name,
                        attempt=attempts,
                        error_type=row.error_type,
                        error=row.error_message,
                        delay=round(max(0.0, delay), 3),
                    )
            elif status == _FAILED_STR:
                self.log.error(
                    "task_failed",
                    task_id=str(task_id),
                    attempt=attempts,
                    task_name=row.task_name if row else None,
                    error_type=row.error_type if row else None,
                    error=row.error_message if row else None,
                )
        if self._info:  # one line per task: --log-level warning saves ~5% in tiny tasks
            for row in rows:
                if row.status is _COMPLETED:
                    self.log.info(
                        "task_completed",
                        task_id=str(row.task_id),
                        task_name=row.task_name,
                        attempt=row.attempt,
                    )

    # ---------------------------------------------------------------------------- upkeep

    def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self._next_poll:
            self._claim_wanted = True
            self._next_poll = now + self.options.poll_interval
        if now < self._next_heartbeat:
            return
        # Heartbeats share the writer's connection: once one is due, _sync starts no new write,
        # so the one in flight (if any) is the last to wait for; the loop never blocks on it.
        if not self._settle(0.0, claim=False):
            return
        self._next_heartbeat = now + self.options.heartbeat_interval
        db = self._ensure_db()
        if db is None:
            return
        try:
            if not WorkerQueries.heartbeat(db, self.worker_id):
                # Another worker declared us lost (we were away too long) and requeued our
                # tasks; our late results will be ignored. Carry on as a fresh registration.
                self.log.warning("worker_declared_lost_reregistering")
                self._register(db)
            full = now >= self._next_full_rescue
            workers, tasks = WorkerQueries.rescue(db, self.options.stale_after, full=full)
            if full:
                self._next_full_rescue = now + self.options.stale_after
        except _DB_ERRORS as exc:
            self._db_lost(exc)
            return
        if tasks or workers:
            self.stats["rescued"] += tasks
            self._claim_wanted = True
            self.log.warning("lost_tasks_requeued", workers=workers, tasks=tasks)


def _wait_for(job: _Round, deadline: float) -> bool:
    """True once ``job`` has run (its outcome is in it), waiting until ``deadline`` at most."""
    assert job.future is not None
    try:
        job.future.result(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return False
    return True


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:
        pass


def _forked_executor(inherited: list[Any], *args: Any) -> None:
    # Until executor_main ignores them, a signal would run the parent's handler copy.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for item in inherited:  # _Executor or Connection: the child's copies only
        item.close()
    executor_main(*args)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
