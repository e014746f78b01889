"""The executor: a child process of the dispatcher that runs task code.

It receives batches of jobs over a pipe, runs them one at a time (``async def`` tasks on an
event loop it keeps), and sends one result message per job. It knows nothing of the database,
and of signals only one: before each job it checks its ``draining`` flag, which the parent
raises with SIGUSR1 (`DRAIN_SIGNAL`) when it begins to stop, so on shutdown it hands back the
jobs it has not started. SIGINT and SIGTERM are ignored: the parent decides when it stops.

What a task does cannot take the executor down with it, short of killing the process: whatever
it raises (``KeyboardInterrupt``, any ``BaseException``, an exception whose ``str`` raises)
fails its attempt with its own type and traceback; standard streams it closed or replaced are
put back before the next task (`_StdStreams`). Each executor leads a session (and process
group) of its own, so the parent can kill it together with the processes its tasks started
(`kill_executor_group`); a child that detaches into a session or group of its own is its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
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


def _lead_own_session() -> None:
    """Become the leader of a new session and process group, before any task runs.

    What a worker owns is its executors' process groups: the processes its tasks start stay in
    their executor's group unless they leave it on purpose (``start_new_session=True``,
    ``process_group=0``, ``setsid``), and `kill_executor_group` kills the group whenever the
    parent kills or stops an executor. A session rather than only a group: with no controlling
    terminal, a task that touches the terminal is never stopped by job control (SIGTTIN,
    SIGTTOU) as a background group would be. The terminal's Ctrl-C now reaches the parent
    only, which stops its executors itself (they ignore SIGINT anyway)."""
    try:
        os.setsid()
    except OSError:  # pragma: no cover - already a group leader: not started by a dispatcher
        pass


def kill_executor_group(process: Any) -> bool:
    """SIGKILL an executor (a `multiprocessing` process) and every process left in its group,
    if its pid is still ours; returns whether it was (and so whether anything was sent).

    An executor's pid, which is its group's id, is ours until the executor is reaped: joined,
    read through ``exitcode``, or reaped by multiprocessing itself, which waits for every dead
    child it knows whenever it starts another process (``Process.start``). From then on the
    kernel may give the id to any new process or group, so nothing is sent: the parent kills
    each executor's group before the reap (`Dispatcher._kill`, `Dispatcher._reap`, and
    `Dispatcher._spawn` for the executors that died meanwhile), and calling this again, or
    after the reap, does nothing. No cost per task: it runs when an executor is killed or found
    dead, with one ``waitid`` call to see that no other thread reaped it."""
    popen = process._popen
    if popen is None or popen.returncode is not None:  # never started, or reaped
        return False
    try:  # alive, or dead and not yet waited for: the pid is still ours (not reaped here)
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by a wait() we did not make: no longer ours
        return False
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:  # no such group: it died, or is killed, before it made its own
        try:
            os.kill(process.pid, signal.SIGKILL)  # a zombie's pid takes it harmlessly
        except OSError:
            pass
    return True


def executor_exited(process: Any) -> bool:
    """Whether an executor has exited, without reaping it (see `kill_executor_group`).

    One ``waitid`` call, as cheap as the ``waitpid`` behind ``process.exitcode``."""
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped (multiprocessing reaps dead children at starts)
        return True


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
    _lead_own_session()
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
    Executor(registry, conn, worker_id, (log_level, log_format)).serve()
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
    ) -> None:
        self.registry = registry
        self.conn = conn
        self.worker_id = worker_id
        self.log = log.bind(worker_id=str(worker_id))
        self.loop = asyncio.new_event_loop()
        self.logging_config = logging_config  # (level, format), to redo it on a new stderr
        self.streams = _StdStreams()

    def serve(self) -> None:
        conn = self.conn
        streams = self.streams
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
                    if not streams.intact():
                        self._restore_streams(wire)
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
                payload = definition.load_payload(wire[_W_ARGS])
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
            return (ERR, key, attempt, started, finished, error_type, message, tb, retryable)
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
        call_on_error(
            definition, exc, job, self.loop.run_until_complete, self.log, contain=(BaseException,)
        )

    def _restore_streams(self, wire: tuple[Any, ...]) -> None:
        repaired, new_stderr = self.streams.restore()
        if new_stderr and self.logging_config is not None:
            # structlog holds the stderr object it was configured with: the closed one
            from .logs import configure_logging

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


class _StdStreams:
    """The standard streams an executor started with, put back when a task leaves them broken.

    A task may close descriptors 0-2 (``os.close(1)``, ``closerange``, a daemonizing library)
    or close or replace ``sys.stdout`` and friends. Every later task of the executor would then
    fail to print (EBADF, "I/O operation on closed file"), or print into whatever file took
    the number next. `intact` runs after every task and looks at what printing needs:
    ``sys.stdout`` and ``sys.stderr`` (the same objects, open) and descriptors 1 and 2, with
    one ``fcntl(F_GETFD)`` each (~0.7 us in all on the benchmark machine, where a system call
    costs ~0.3 us; a third call for stdin would add that again, for a stream no task should
    read). When it fails, `restore` looks at all of 0-2 and stdin too.

    A number closed and taken again by a file the task opened shows as not inheritable
    (Python opens every file close-on-exec, PEP 446; descriptors 0-2 are made inheritable at
    start, as standard streams are): the standard stream is put back over it, so later prints
    and children's output go where they went before, not into the task's file (which from
    then on refers to the stream). A descriptor the task redirected on purpose with
    ``os.dup2`` (inheritable) is left as the task set it.
    """

    _STDIO = (("stdin", "r"), ("stdout", "w"), ("stderr", "w"))

    def __init__(self) -> None:
        self.saved: list[int] = []  # close-on-exec copies of descriptors 0-2
        for fd in (0, 1, 2):
            try:
                os.set_inheritable(fd, True)
            except OSError:  # started without it: /dev/null, so no file of ours takes it
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
                os.set_inheritable(fd, True)
            self.saved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        for name, mode in self._STDIO:
            if getattr(sys, name) is None:  # no stream at start: one that discards
                setattr(sys, name, open(os.devnull, mode))  # kept for good
        self.objects: list[Any] = [sys.stdin, sys.stdout, sys.stderr]
        self.stdout, self.stderr = sys.stdout, sys.stderr

    def intact(self) -> bool:
        stdout, stderr = self.stdout, self.stderr
        inheritable = os.get_inheritable
        try:
            return (
                sys.stdout is stdout
                and sys.stderr is stderr
                and not (stdout.closed or stderr.closed)
                and inheritable(1)
                and inheritable(2)
            )
        except OSError:  # a descriptor is closed
            return False

    def restore(self) -> tuple[list[str], bool]:
        """Put back what is broken; returns what was, and whether ``sys.stderr`` is new."""
        repaired = []
        for fd, saved in enumerate(self.saved):
            try:
                if os.get_inheritable(fd):
                    continue
                repaired.append(f"fd {fd} taken by a file the task opened after closing it")
            except OSError:
                repaired.append(f"fd {fd} closed")
            os.dup2(saved, fd)
        new_stderr = False
        for fd, (name, mode) in enumerate(self._STDIO):
            original = self.objects[fd]
            if original.closed:
                new = _reopen(original, fd, mode)
                for attr in (name, f"__{name}__"):
                    if getattr(sys, attr) is original:
                        setattr(sys, attr, new)
                self.objects[fd] = new
                new_stderr = new_stderr or name == "stderr"
                repaired.append(f"sys.{name} closed")
            if getattr(sys, name) is not self.objects[fd]:
                setattr(sys, name, self.objects[fd])
                repaired.append(f"sys.{name} replaced")
        self.stdout, self.stderr = sys.stdout, sys.stderr
        return repaired, new_stderr


def _reopen(original: Any, fd: int, mode: str) -> Any:
    """A new text stream like ``original`` (closed by a task), on its standard descriptor."""
    name = getattr(original, "name", None)
    options: dict[str, Any] = {
        "encoding": getattr(original, "encoding", None),
        "errors": getattr(original, "errors", None),
    }
    if mode == "w" and getattr(original, "line_buffering", False):
        options["buffering"] = 1
    if name == os.devnull:  # multiprocessing gives its children a stdin reading /dev/null
        return open(os.devnull, mode, **options)  # the process's stream from now on
    return open(fd, mode, closefd=False, **options)  # likewise


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
