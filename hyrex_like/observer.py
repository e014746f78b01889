"""Hooks a worker calls as it works: metrics, tracing and tests watch through them.

Pass an instance to ``hy.worker(..., observer=...)`` (or ``Dispatcher(..., observer=...)``);
override the methods you need, the rest do nothing. Each hook is called on the dispatch loop's
thread, except `heartbeat`, `rescued` and `maintenance_skipped` (the upkeep thread) and
`scheduled` and `scheduler_skipped` (the scheduler's thread), so keep it cheap and
thread-safe; an exception it raises is logged once and otherwise ignored, never the worker's
problem, except a `ConfigurationError` from `attached` (an observer that cannot start, such as
a metrics server whose port is taken), which stops the worker's start. With no observer the
worker pays nothing for them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .db import FinishedRow

__all__ = [
    "GuardedObserver",
    "MultiObserver",
    "RecordingObserver",
    "WorkerObserver",
    "WorkerView",
]


class WorkerView(Protocol):
    """What an observer may read of a running worker, from any thread (`attached`)."""

    def in_flight(self) -> int:
        """Attempts the worker holds: claimed, running or ended and not yet written."""
        ...

    def running(self) -> int:
        """Executors busy now (one may run many attempts with ``async_concurrency``)."""
        ...


class WorkerObserver:
    """The worker's events, as no-op methods to override."""

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        """A claim statement asked for ``asked`` tasks and got ``got``, in ``seconds``."""

    def written(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` finished attempts was written (one statement), in ``seconds``."""

    def given_back(self, rows: int) -> None:
        """``rows`` claimed but never started attempts were queued again as they were."""

    def dispatched(self, executor: int, jobs: int) -> None:
        """One message handed ``jobs`` tasks to executor number ``executor``."""

    def step(self, name: str, seconds: float) -> None:
        """One step of the dispatch loop (``sync``, ``dispatch``, ``wait``, ...) took
        ``seconds``. Only called when overridden: timing every step costs a little."""

    def heartbeat(self, alive: bool) -> None:
        """A heartbeat was written; ``alive`` is False if another worker had declared this
        one lost (it registers again)."""

    def rescued(self, workers: int, tasks: int) -> None:
        """This worker, as the elected rescuer, ran a rescue scan: ``workers`` workers were
        found dead and ``tasks`` of their tasks queued again."""

    def maintenance_skipped(self, why: str) -> None:
        """A maintenance round did not run (``why``: ``not_leader``, ``database`` or
        ``error``)."""

    def scheduled(self, tasks: int) -> None:
        """A scheduler pass ran and made ``tasks`` tasks (0: nothing was due, or another
        scheduler made them first)."""

    def scheduler_skipped(self, why: str) -> None:
        """A scheduler pass failed (``why``: ``database`` or ``error``); it is retried soon."""

    def attached(self, worker_id: uuid.UUID, view: WorkerView) -> None:
        """Once, as the worker starts: its id, and a view to read its state at any time. A
        `ConfigurationError` it raises stops the worker's start (`detached` is still called)."""

    def detached(self) -> None:
        """Once, as the worker's run ends, however it ended (even if its start failed): release
        what `attached` took (a server, a thread)."""

    def attempts(self, rows: Sequence[FinishedRow]) -> None:
        """These ended attempts were written (one batch; a row per attempt, its task name,
        status and times)."""

    def executor_restarted(self, executor: int, exit_code: int | None) -> None:
        """Executor number ``executor`` died (``exit_code``; negative: a signal) and a new one
        took its place."""


HOOKS = tuple(
    name for name, value in vars(WorkerObserver).items() if callable(value) and name[0] != "_"
)
"""Every hook's name."""


def _nothing(*args: Any) -> None:
    pass


class GuardedObserver(WorkerObserver):
    """Forwards every event to ``inner``; an exception a hook raises is logged once per hook
    and otherwise ignored."""

    def __init__(self, inner: WorkerObserver, log: Any) -> None:
        self.inner = inner
        self._log = log
        self._failed: set[str] = set()
        for name in HOOKS:  # a hook ``inner`` leaves as it is costs one empty call, no lookup
            if not overrides(inner, name):
                setattr(self, name, _nothing)

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self.inner, name)(*args)
        except Exception as exc:
            self._failed_once(name, exc)

    def _failed_once(self, name: str, exc: Exception) -> None:
        if name not in self._failed:
            self._failed.add(name)
            self._log.warning("observer_failed", hook=name, error=f"{type(exc).__name__}: {exc}")

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        self._call("claimed", asked, got, seconds)

    def written(self, rows: int, seconds: float) -> None:
        self._call("written", rows, seconds)

    def given_back(self, rows: int) -> None:
        self._call("given_back", rows)

    def dispatched(self, executor: int, jobs: int) -> None:
        self._call("dispatched", executor, jobs)

    def step(self, name: str, seconds: float) -> None:
        self._call("step", name, seconds)

    def heartbeat(self, alive: bool) -> None:
        self._call("heartbeat", alive)

    def rescued(self, workers: int, tasks: int) -> None:
        self._call("rescued", workers, tasks)

    def maintenance_skipped(self, why: str) -> None:
        self._call("maintenance_skipped", why)

    def scheduled(self, tasks: int) -> None:
        self._call("scheduled", tasks)

    def scheduler_skipped(self, why: str) -> None:
        self._call("scheduler_skipped", why)

    def attached(self, worker_id: uuid.UUID, view: WorkerView) -> None:
        try:
            self.inner.attached(worker_id, view)
        except ConfigurationError:
            raise  # the observer cannot start (a port taken): the worker must not run without it
        except Exception as exc:
            self._failed_once("attached", exc)

    def detached(self) -> None:
        self._call("detached")

    def attempts(self, rows: Sequence[FinishedRow]) -> None:
        self._call("attempts", rows)

    def executor_restarted(self, executor: int, exit_code: int | None) -> None:
        self._call("executor_restarted", executor, exit_code)


class MultiObserver(WorkerObserver):
    """Tells every one of ``observers`` of each event, in order, each guarded on its own (one
    that raises neither stops the others nor the worker). A hook goes only to the observers
    that override it."""

    def __init__(self, *observers: WorkerObserver, log: Any = None) -> None:
        from .logs import get_logger

        self.observers = observers
        guard = log if log is not None else get_logger("hyrex_like.worker")
        guarded = [GuardedObserver(o, guard) for o in observers]
        self._to: dict[str, list[Callable[..., None]]] = {
            name: [
                getattr(g, name)
                for g, o in zip(guarded, observers, strict=True)
                if overrides(o, name)
            ]
            for name in HOOKS
        }

    def _fan(self, name: str, *args: Any) -> None:
        for hook in self._to[name]:
            hook(*args)

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        self._fan("claimed", asked, got, seconds)

    def written(self, rows: int, seconds: float) -> None:
        self._fan("written", rows, seconds)

    def given_back(self, rows: int) -> None:
        self._fan("given_back", rows)

    def dispatched(self, executor: int, jobs: int) -> None:
        self._fan("dispatched", executor, jobs)

    def step(self, name: str, seconds: float) -> None:
        self._fan("step", name, seconds)

    def heartbeat(self, alive: bool) -> None:
        self._fan("heartbeat", alive)

    def rescued(self, workers: int, tasks: int) -> None:
        self._fan("rescued", workers, tasks)

    def maintenance_skipped(self, why: str) -> None:
        self._fan("maintenance_skipped", why)

    def scheduled(self, tasks: int) -> None:
        self._fan("scheduled", tasks)

    def scheduler_skipped(self, why: str) -> None:
        self._fan("scheduler_skipped", why)

    def attached(self, worker_id: uuid.UUID, view: WorkerView) -> None:
        self._fan("attached", worker_id, view)

    def detached(self) -> None:
        self._fan("detached")

    def attempts(self, rows: Sequence[FinishedRow]) -> None:
        self._fan("attempts", rows)

    def executor_restarted(self, executor: int, exit_code: int | None) -> None:
        self._fan("executor_restarted", executor, exit_code)


def overrides(observer: WorkerObserver | None, name: str) -> bool:
    """Whether ``observer`` (or one it forwards to) overrides hook ``name``: the worker skips
    work done only for a hook nobody listens to."""
    if observer is None:
        return False
    if isinstance(observer, GuardedObserver):
        return overrides(observer.inner, name)
    if isinstance(observer, MultiObserver):
        return any(overrides(o, name) for o in observer.observers)
    return getattr(type(observer), name) is not getattr(WorkerObserver, name)


def timed(observer: WorkerObserver, *steps: tuple[str, Callable[[], object]]) -> None:
    """Run ``steps`` in order, telling ``observer`` how long each took."""
    for name, step in steps:
        began = time.perf_counter()
        step()
        observer.step(name, time.perf_counter() - began)


def times_steps(observer: WorkerObserver | None) -> bool:
    """Whether ``observer`` wants the loop's steps timed (it overrides `step`)."""
    return overrides(observer, "step")


class RecordingObserver(WorkerObserver):
    """Counts every event and lets a test wait for one: ``wait_for("rescued", 1, 10)`` returns
    once a rescue scan has run, instead of sleeping for the stale-after period."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: dict[str, tuple[Any, ...]] = {}
        self._changed = threading.Condition()

    def _record(self, name: str, *args: Any) -> None:
        with self._changed:
            self.counts[name] += 1
            self.last[name] = args
            self._changed.notify_all()

    def wait_for(
        self,
        name: str,
        count: int = 1,
        timeout: float = 30.0,
        where: Callable[[tuple[Any, ...]], bool] | None = None,
    ) -> tuple[Any, ...]:
        """Wait until event ``name`` has happened ``count`` times in all (and, with ``where``,
        its latest arguments satisfy it); return those arguments. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (self.counts[name] >= count and (where is None or where(self.last[name]))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no {name!r} event (x{count}) within {timeout:g}s; saw {dict(self.counts)}"
                    )
                self._changed.wait(left)
            return self.last[name]

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        self._record("claimed", asked, got, seconds)

    def written(self, rows: int, seconds: float) -> None:
        self._record("written", rows, seconds)

    def given_back(self, rows: int) -> None:
        self._record("given_back", rows)

    def dispatched(self, executor: int, jobs: int) -> None:
        self._record("dispatched", executor, jobs)

    def heartbeat(self, alive: bool) -> None:
        self._record("heartbeat", alive)

    def rescued(self, workers: int, tasks: int) -> None:
        self._record("rescued", workers, tasks)

    def maintenance_skipped(self, why: str) -> None:
        self._record("maintenance_skipped", why)

    def scheduled(self, tasks: int) -> None:
        self._record("scheduled", tasks)

    def scheduler_skipped(self, why: str) -> None:
        self._record("scheduler_skipped", why)

    def attempts(self, rows: Sequence[FinishedRow]) -> None:
        self._record("attempts", len(rows))

    def executor_restarted(self, executor: int, exit_code: int | None) -> None:
        self._record("executor_restarted", executor, exit_code)
