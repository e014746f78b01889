"""A worker started from code: ``hy.worker(queues=["emails"], processes=2).run()``.

`Worker` is the one way a worker starts: ``hyrex-like run-worker`` builds it too, after
configuring logging. It checks its options when it is made (`WorkerOptions` holds their
defaults and bounds), finds the import path its executors load the app by, and runs a
`Dispatcher` until `Worker.stop`, or SIGTERM/SIGINT/SIGHUP when `run` is called from the
main thread (the only thread that may take signals; the handlers are restored afterwards).

Logging: a worker started from code configures nothing in the calling process unless it is
given ``log_level`` or ``log_format``; its events then go where the application's own logging
sends them (see `hyrex_like.logs`). Its executor processes, which are the worker's own, print
their warnings on stderr at ``log_level`` (default info) as the CLI's do.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from types import ModuleType, TracebackType
from typing import Any

import pydantic

from .config import WorkerOptions
from .dispatcher import Dispatcher
from .errors import ConfigurationError, WorkerError
from .logs import configure_logging
from .observer import WorkerObserver
from .registry import HyrexRegistry
from .worker.app import load_registry


def worker_options(**given: Any) -> WorkerOptions:
    """`WorkerOptions` from keyword options (None: the default), or a one-line
    `ConfigurationError` naming the option."""
    given = {k: v for k, v in given.items() if v is not None}
    queues = given.get("queues")
    if isinstance(queues, str | bytes):
        raise ConfigurationError(
            f"invalid worker option queues: expected a list of queue names, got the string "
            f"{queues!r} (did you mean queues=[{queues!r}]?)"
        )
    if queues is not None:
        if not isinstance(queues, Iterable):
            raise ConfigurationError(
                f"invalid worker option queues: expected a list of queue names, "
                f"got {type(queues).__name__}"
            )
        given["queues"] = tuple(queues)
    try:
        return WorkerOptions(**given)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        name = ".".join(str(part) for part in error["loc"])
        if name and error["type"] != "value_error":
            message = f"{message}, got {error['input']!r}"
        problems.append((name, message))
    if len(problems) == 1 and problems[0][0]:
        text = f"invalid worker option {problems[0][0]}: {problems[0][1]}"
    else:
        text = "invalid worker options: " + "; ".join(
            f"{name}: {message}" if name else message for name, message in problems
        )
    return " ".join(text.split())


def app_path(registry: HyrexRegistry) -> str:
    """The import path (``module:attribute``) executors load ``registry`` by: a module-level
    name that holds it, in a module imported so far. Spawned executors get this process's
    ``sys.path``, and multiprocessing runs a ``__main__`` script again as ``__mp_main__``."""
    found = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType) or name == "__mp_main__":
            continue
        for attr, value in list(vars(module).items()):
            if value is registry and not attr.startswith("__"):
                found.append((name == "__main__", name, attr))
    if not found:
        raise WorkerError(
            f"cannot find {registry!r} in any module: executors import the app by its import "
            "path, so bind the registry to a module-level name, or pass app='module:attribute'"
        )
    in_main, module_name, attr = min(found)
    main = sys.modules["__main__"]
    if in_main and getattr(main, "__file__", None) is None and main.__spec__ is None:
        raise WorkerError(
            f"{registry!r} lives in a __main__ with no file (python -c, a notebook, the "
            "interactive prompt), which an executor cannot import again: define it in a module "
            "and pass app='module:attribute'"
        )
    return f"{module_name}:{attr}"


class Worker:
    """Runs a registry's tasks in this process and its executors, until stopped.

    Made by `HyrexRegistry.worker`. `run` blocks the calling thread; `start` runs it on a
    background thread (``with hy.worker() as w:`` starts it and stops it on exit). `stop` is
    graceful, like SIGTERM: claims stop, claimed tasks not started are handed back, running ones
    get ``grace_period`` seconds. A worker runs once at a time, and may run again after.
    """

    def __init__(
        self,
        registry: HyrexRegistry,
        options: WorkerOptions,
        *,
        app: str | None = None,
        configure_logs: bool = False,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        if app is None:
            app = app_path(registry)
        elif load_registry(app) is not registry:
            raise WorkerError(f"app {app!r} is another registry than {registry!r}")
        self.app = app
        """What executors import: ``module:attribute``."""
        self._configure_logs = configure_logs
        self.observer = observer
        self._lock = threading.Lock()
        self._dispatcher: Dispatcher | None = None
        self._thread: threading.Thread | None = None
        self._outcome: int | BaseException | None = None

    @classmethod
    def create(
        cls,
        registry: HyrexRegistry,
        *,
        app: str | None,
        observer: WorkerObserver | None = None,
        **options: Any,
    ) -> Worker:
        """A worker from keyword options, as `HyrexRegistry.worker` takes them."""
        log_given = options.get("log_level") is not None or options.get("log_format") is not None
        return cls(
            registry,
            worker_options(**options),
            app=app,
            configure_logs=log_given,
            observer=observer,
        )

    def __repr__(self) -> str:
        return f"<Worker app={self.app!r} processes={self.options.processes}>"

    @property
    def running(self) -> bool:
        return self._dispatcher is not None

    def run(self) -> int:
        """Run in the calling thread until stopped; returns the exit code (0 after a graceful
        stop, 1 after a second signal). Raises `WorkerError` when the app has no tasks,
        `ConfigurationError` or `DatabaseError` when the database refuses the worker."""
        return self._run(self._begin())

    def start(self) -> None:
        """Run on a background thread (signals are then the application's to handle: call
        `stop`). `join` waits for the end. Stop it before the program exits: the thread is a
        daemon, and a process that exits under a running worker leaves its tasks to be
        requeued by other workers after ``stale_after``."""
        dispatcher = self._begin()
        self._outcome = None
        self._thread = threading.Thread(
            target=self._run_in_thread, args=(dispatcher,), name="hyrex-worker", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Begin a graceful stop of the running worker, as SIGTERM does (any thread; returns
        at once). Does nothing when the worker is not running."""
        with self._lock:
            if self._dispatcher is not None:
                self._dispatcher.request_stop()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for a worker `start`ed in the background to end: its exit code, or None if it
        still runs after ``timeout`` seconds. Raises what the worker raised."""
        if self._thread is None:
            raise WorkerError("join(): this worker was not started with start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.join()

    def _begin(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is not None:
                raise WorkerError(f"{self!r} is already running")
            if self._configure_logs:
                # before the dispatcher binds its logger, so it binds to this configuration
                configure_logging(self.options.log_level, self.options.log_format)
            self._dispatcher = Dispatcher(
                self.registry, self.app, self.options, observer=self.observer
            )
            return self._dispatcher

    def _run(self, dispatcher: Dispatcher) -> int:
        try:
            return dispatcher.run()
        finally:
            with self._lock:
                self._dispatcher = None

    def _run_in_thread(self, dispatcher: Dispatcher) -> None:
        try:
            self._outcome = self._run(dispatcher)
        except BaseException as exc:  # handed to join()
            self._outcome = exc
