"""Hooks a worker calls as it works: metrics, tracing and tests watch through them.

Pass an instance to ``hy.worker(..., observer=...)`` (or ``Dispatcher(..., observer=...)``);
override the methods you need, the rest do nothing. Each hook is called on the dispatch loop's
thread, except `heartbeat`, `rescued` and `maintenance_skipped` (the upkeep thread) and
`scheduled` and `scheduler_skipped` (the scheduler's thread), so keep it cheap and
thread-safe; an exception it raises is logged once and otherwise ignored, never the worker's
problem. With no observer the worker pays nothing for them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["GuardedObserver", "RecordingObserver", "WorkerObserver"]


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


class GuardedObserver(WorkerObserver):
    """Forwards every event to ``inner``; an exception a hook raises is logged once per hook
    and otherwise ignored."""

    def __init__(self, inner: WorkerObserver, log: Any) -> None:
        self.inner = inner
        self._log = log
        self._failed: set[str] = set()

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self.inner, name)(*args)
        except Exception as exc:
            if name not in self._failed:
                self._failed.add(name)
                self._log.warning(
                    "observer_failed", hook=name, error=f"{type(exc).__name__}: {exc}"
                )

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


def timed(observer: WorkerObserver, *steps: tuple[str, Callable[[], object]]) -> None:
    """Run ``steps`` in order, telling ``observer`` how long each took."""
    for name, step in steps:
        began = time.perf_counter()
        step()
        observer.step(name, time.perf_counter() - began)


def times_steps(observer: WorkerObserver | None) -> bool:
    """Whether ``observer`` wants the loop's steps timed (it overrides `step`)."""
    if isinstance(observer, GuardedObserver):
        observer = observer.inner
    return observer is not None and type(observer).step is not WorkerObserver.step


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
