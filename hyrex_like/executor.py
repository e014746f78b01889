"""The executor: a child process of the dispatcher that runs task code.

It receives batches of jobs over a pipe, runs them one at a time (``async def`` tasks on an
event loop it keeps), and sends one result message per job. It knows nothing of the database,
and of signals only one: before each job it checks its ``draining`` flag, which the parent
raises with SIGUSR1 (`DRAIN_SIGNAL`) when it begins to stop, so on shutdown it hands back the
jobs it has not started. SIGINT and SIGTERM are ignored: the parent decides when it stops.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib
import os
import pickle
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pydantic
import structlog

from .config import Settings
from .context import HyrexContext, _LazyContext, _reset_context, _set_context
from .errors import PayloadNotSerializable, WorkerError
from .registry import HyrexRegistry, TaskDefinition

log = structlog.get_logger("hyrex_like.executor")

_MAX_TRACEBACK = 20_000


@dataclass(slots=True)
class Job:
    """A claimed task attempt, as handed to an executor."""

    task_id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    args: str
    attempt: int
    max_retries: int
    timeout: float | None
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None

    def wire(self) -> tuple[Any, ...]:
        """The job as sent to an executor: a plain tuple, ids as bytes (cheap to pickle)."""
        return (
            self.task_id.bytes,
            self.task_name,
            self.queue,
            self.priority,
            self.args,
            self.attempt,
            self.max_retries,
            self.timeout,
            self.parent_id.bytes if self.parent_id else None,
            self.root_id.bytes if self.root_id else None,
        )

    @classmethod
    def from_wire(cls, w: tuple[Any, ...]) -> Job:
        return cls(
            uuid.UUID(bytes=w[0]),
            w[1],
            w[2],
            w[3],
            w[4],
            w[5],
            w[6],
            w[7],
            uuid.UUID(bytes=w[8]) if w[8] else None,
            uuid.UUID(bytes=w[9]) if w[9] else None,
        )


# Positions in `Job.wire` the executor reads without building the Job.
_W_KEY, _W_NAME, _W_ARGS, _W_ATTEMPT = 0, 1, 4, 5

# Result messages: lists of tuples, task ids as 16 bytes:
#   ("ok",   task_id, attempt, started, finished, result_json)
#   ("err",  task_id, attempt, started, finished, type, message, traceback, retryable)
#   ("skip", task_id, attempt)                  not started: the worker is draining
# and once, at start: ("ready", pid).
OK, ERR, SKIP = "ok", "err", "skip"


def load_registry(app: str) -> HyrexRegistry:
    """Import ``module:attr`` (or ``module`` holding exactly one registry).

    A file path (``app.py``) is refused with the import path to use instead (``app:hy``, the
    attribute found by importing the module when it imports)."""
    module_name, _, attr = app.partition(":")
    if not module_name:
        raise WorkerError(f"bad app path {app!r}: expected 'module:attribute' or 'module'")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = module_name.removesuffix(".py")
        path = os.path.relpath(path) if os.path.isabs(path) else os.path.normpath(path)
        dotted = (
            os.path.basename(path) if path.startswith("..") else path.replace(os.sep, ".")
        ).replace("/", ".")
        names = [attr] if attr else []
        if not names and dotted.replace(".", "").replace("_", "").isalnum():
            namespace: dict[str, Any] = {}
            try:
                namespace = vars(importlib.import_module(dotted))
            except Exception:  # BaseException subclasses (SystemExit...) still propagate
                pass
            names = [k for k, v in namespace.items() if isinstance(v, HyrexRegistry)]
        guesses = " or ".join(f"`{dotted}:{n}`" for n in names) or f"`{dotted}:<attribute>`"
        raise WorkerError(
            f"{app!r} is a file path; run-worker takes an import path, 'module:attribute' "
            f"(run from the directory that holds the module): did you mean {guesses}?"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise WorkerError(  # the app imports, but something it imports is missing
                f"importing module {module_name!r} from {app!r} failed: ModuleNotFoundError: {exc}"
            ) from None
        raise WorkerError(
            f"cannot import module {module_name!r} from {app!r}: it is neither in the working "
            f"directory ({os.getcwd()}) nor on the Python path; run the worker from the "
            "directory that holds it, or add that directory to PYTHONPATH"
        ) from None
    except ImportError as exc:
        raise WorkerError(f"cannot import module {module_name!r} from {app!r}: {exc}") from None
    except Exception as exc:  # the app's own code failed while being imported
        raise WorkerError(
            f"importing module {module_name!r} from {app!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise WorkerError(
                    f"module {module_name!r} has no attribute {attr!r} (from {app!r})"
                ) from None
        if not isinstance(obj, HyrexRegistry):
            raise WorkerError(f"{app!r} is a {type(obj).__name__}, not a HyrexRegistry")
        return obj
    found = [v for v in vars(module).values() if isinstance(v, HyrexRegistry)]
    if len(found) != 1:
        raise WorkerError(
            f"module {module_name!r} holds {len(found)} HyrexRegistry objects; "
            f"name one as '{module_name}:attribute'"
        )
    return found[0]


DRAIN_SIGNAL = signal.SIGUSR1
"""Sent by the dispatcher to its executors when it begins to stop: start no further jobs.

A signal and a flag, not a shared ``multiprocessing.Event``: checking a semaphore-backed event
before every job cost ~1 us per task, and creating one started multiprocessing's resource
tracker (a third interpreter) at every worker start; now only a spawned replacement executor
starts it. The dispatcher blocks the signal while it starts an executor, so it stays pending
until `executor_main` has its handler in place. The handler restarts interrupted system calls
(``siginterrupt(False)``), so native code inside a running task does not see EINTR."""

_draining = False


def _on_drain_signal(signum: int, frame: Any) -> None:
    global _draining
    _draining = True


def _install_drain_handler() -> None:
    signal.signal(DRAIN_SIGNAL, _on_drain_signal)
    signal.siginterrupt(DRAIN_SIGNAL, False)


PROCESS_NAME = b"hyrex-executor"
"""What ``ps -o comm``, ``top`` and ``/proc/<pid>/comm`` show for an executor (Linux)."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the dispatcher dies, so no task runs unsupervised, and name
    the process (a forked executor's command line is its parent's)."""
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
    set_os_thread_name(PROCESS_NAME)


def set_os_thread_name(name: bytes) -> None:
    """Name the calling thread for ps, top -H and /proc (Linux; 15 bytes at most)."""
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):  # pragma: no cover
            pass


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def executor_main(
    app: str,
    settings: Settings,
    conn: Connection,
    draining: bool,
    log_level: str,
    log_format: str,
    worker_id: uuid.UUID,
) -> None:
    """Entry point of an executor process."""
    global _draining
    _die_with_parent()
    # The parent decides when we stop; a Ctrl-C or a SIGTERM sent to the whole process group
    # must not kill a task halfway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _draining = _draining or draining
    # A forked executor inherits what importing the app in the parent installed.
    inherited = signal.getsignal(DRAIN_SIGNAL)
    _install_drain_handler()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {DRAIN_SIGNAL})  # a pending one arrives now
    from .logs import configure_logging

    configure_logging(log_level, log_format)
    registry = load_registry(app)
    replaced = signal.getsignal(DRAIN_SIGNAL) is not _on_drain_signal
    if replaced or callable(inherited):
        # Importing the app installed its own: without ours a stopping worker could not hand
        # back the jobs an executor has not started (they would run, or be interrupted).
        log.warning(
            "drain_signal_handler_replaced",
            signal=DRAIN_SIGNAL.name,
            detail="importing the app installed its own handler; hyrex-like needs this signal "
            "to stop executors cleanly and has put its handler back",
        )
        _install_drain_handler()
    registry.configure(**settings.model_dump())
    conn.send(("ready", os.getpid()))
    Executor(registry, conn, worker_id).serve()
    # Nothing left to clean up but the pools a task may have opened; skipping the interpreter's
    # slow teardown makes a worker's shutdown (and every restart in tests) quicker.
    registry.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Executor:
    def __init__(self, registry: HyrexRegistry, conn: Connection, worker_id: uuid.UUID) -> None:
        self.registry = registry
        self.conn = conn
        self.worker_id = worker_id
        self.log = log.bind(worker_id=str(worker_id))
        self.loop = asyncio.new_event_loop()

    def serve(self) -> None:
        conn = self.conn
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if batch is None:
                return
            for wire in batch:
                if _draining:
                    result = (SKIP, wire[_W_KEY], wire[_W_ATTEMPT])
                else:
                    result = self.run(wire)
                # Each result leaves before the next job starts: holding results to send them
                # in groups would lose them, and re-run their tasks, if the next job crashed
                # this process.
                try:
                    # plain pickle: Connection.send builds a ForkingPickler per message,
                    # which was a third of an executor's time per tiny task
                    conn.send_bytes(pickle.dumps([result], pickle.HIGHEST_PROTOCOL))
                except OSError:
                    return  # the parent is gone

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
        token = _set_context(_LazyContext(lambda: self._context(Job.from_wire(wire))))
        retryable = True
        try:
            try:
                payload = _load(definition, wire[_W_ARGS])
            except pydantic.ValidationError:
                retryable = False  # the stored args will not validate next time either
                raise
            value = definition.call(payload)
            if definition.is_async or asyncio.iscoroutine(value):
                value = self.loop.run_until_complete(value)
            try:
                result = definition.dump_result(value)
            except PayloadNotSerializable:
                retryable = False
                raise
            return (OK, key, attempt, started, time.time(), result)
        except (Exception, SystemExit) as exc:
            finished = time.time()
            tb = traceback.format_exc()[-_MAX_TRACEBACK:]
            self._on_error(definition, exc, Job.from_wire(wire))
            return (
                ERR,
                key,
                attempt,
                started,
                finished,
                type(exc).__qualname__,
                str(exc),
                tb,
                retryable,
            )
        finally:
            _reset_context(token)

    def _context(self, job: Job) -> HyrexContext:
        return HyrexContext.model_construct(
            task_id=job.task_id,
            task_name=job.task_name,
            attempt_number=job.attempt,
            max_retries=job.max_retries,
            queue=job.queue,
            priority=job.priority,
            parent_id=job.parent_id,
            root_id=job.root_id,
            worker_id=self.worker_id,
        )

    def _on_error(self, definition: TaskDefinition[Any, Any], exc: BaseException, job: Job) -> None:
        call_on_error(definition, exc, job, self.loop.run_until_complete, self.log)


def call_on_error(
    definition: TaskDefinition[Any, Any],
    exc: BaseException,
    job: Job,
    run_coroutine: Callable[[Any], Any],
    logger: Any,
) -> None:
    """Call the task's ``on_error`` (sync or async); whatever it raises is logged, never fatal.

    The executor calls it for exceptions raised by the task; the dispatcher for attempts it
    ended itself (timeout, executor lost).
    """
    callback = definition.config.on_error
    if callback is None:
        return
    try:
        outcome = callback(exc)  # type: ignore[arg-type]
        if asyncio.iscoroutine(outcome):
            run_coroutine(outcome)
    except (Exception, SystemExit) as cb_exc:  # user code must not stop the worker
        logger.error(
            "on_error_failed",
            task_id=str(job.task_id),
            task_name=job.task_name,
            attempt=job.attempt,
            error=f"{type(cb_exc).__name__}: {cb_exc}",
        )


def _load(definition: TaskDefinition[Any, Any], args: str) -> Any:
    if definition.payload_adapter is None:
        return None
    return definition.payload_adapter.validate_json(args)
