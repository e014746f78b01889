"""The scheduler: turns the ticks of the registry's schedules into tasks, exactly once each
across every scheduler of the schema.

Every worker runs one by default (``run-worker --no-scheduler`` turns it off), and
``hyrex-like run-scheduler`` runs one alone. Any number may run at once: each pass inserts a
schedule's due ticks with their tasks in one statement keyed by (schedule, tick time)
(``insert_schedule_ticks``), so a tick that two schedulers both find due makes one task, and a
tick is never recorded without its task. Which ticks are due is `schedules.due_ticks`' business
(the catch-up policy), from the newest tick recorded in the database: read when the scheduler
starts or reconnects, then kept up to date by its own passes.

A thread and a connection of its own, as `Maintenance` has: it sleeps until the next tick of
its schedules (not a poll: the tick's task should start within milliseconds of its time), and
no error ends it (a database outage is logged once; the next pass reconnects). Every ten
minutes it also deletes its schedules' tick rows older than their catch-up window and a day
(never a schedule's newest): no scheduler fires a tick that old again.
`Scheduler.run_once` is one pass, callable without the thread in tests, with the clock given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ..catch_up import due_ticks
from ..db import WorkerQueries
from ..ids import new_task_ids
from ..observer import WorkerObserver
from ..registry import HyrexRegistry
from ..task import TaskDefinition
from .connection import DB_ERRORS, describe
from .service import ThreadService

RETRY_AFTER = timedelta(seconds=1)
MAX_SLEEP = 30.0
"""The longest the thread sleeps between two passes (seconds), whatever the next tick."""
"""How soon a pass that failed (database away, an error) is tried again."""

PRUNE_EVERY = timedelta(minutes=10)
"""How often a scheduler deletes its schedules' old tick rows (`prune_schedule_ticks`)..."""
PRUNE_BATCH = 5_000
"""...at most this many per schedule at a time (a second's ticks for over an hour), so the
pass after a tick stays short."""
KEEP_TICKS = timedelta(days=1)
"""Tick rows are kept this long beyond the schedule's catch-up window (the newest always)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler(ThreadService):
    """Fires the schedules of a registry's tasks (or of the definitions given)."""

    thread_name = "hyrex-scheduler"
    event = "scheduler"

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        registry_or_definitions: HyrexRegistry | Mapping[str, TaskDefinition[Any, Any]],
        log: Any,
        *,
        clock: Callable[[], datetime] = _utc_now,
        observer: WorkerObserver | None = None,
    ) -> None:
        super().__init__(connect, log)
        if isinstance(registry_or_definitions, HyrexRegistry):
            definitions = registry_or_definitions.scheduled()
        else:
            definitions = dict(registry_or_definitions)
        # (the schedules are fixed for the scheduler's life: a changed one takes effect at
        # the next start, and its recorded ticks are never fired again: same key)
        self.definitions = {name: d for name, d in definitions.items() if d.schedule is not None}
        self.clock = clock
        self.observer = observer or WorkerObserver()
        self._last: dict[str, datetime] | None = None  # newest recorded tick; None: read it
        # when this scheduler's previous pass succeeded (None: none yet, or it failed): the
        # ticks since then were this scheduler's to fire, never missed ones (`due_ticks`)
        self._prev_pass: datetime | None = None
        self._failed_at: datetime | None = None  # the last pass failed (retry soon)
        self._broken: set[str] = set()  # schedules whose last firing raised (logged once)
        self._next_prune: datetime | None = None  # None: at the first pass that works

    # ---------------------------------------------------------------- the thread

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.clock()
                self.run_once(now)
                if self.db is not None and (self._next_prune is None or now >= self._next_prune):
                    self.prune(now)  # right after a pass: the next tick is furthest away
                left = (self.next_wake(self.clock()) - self.clock()).total_seconds()
            except Exception as exc:  # never end the thread: the schedules would stop firing
                self.log.error("scheduler_failed", error=describe(exc))
                left = RETRY_AFTER.total_seconds()
            # At most MAX_SLEEP at a time: the wait runs on the monotonic clock, and the wall
            # clock may step (NTP) or the host sleep; a pass with nothing due costs nothing.
            self._stop.wait(min(max(0.0, left), MAX_SLEEP))

    def next_wake(self, now: datetime) -> datetime:
        """When the next pass is due: the earliest next tick of the schedules (sooner after a
        failed pass, to retry)."""
        wakes = [d.schedule.next_after(now) for d in self.definitions.values() if d.schedule]
        if self._failed_at is not None:
            wakes.append(self._failed_at + RETRY_AFTER)
        return min(wakes, default=now + timedelta(hours=1))

    # ---------------------------------------------------------------- one pass

    def run_once(self, now: datetime | None = None) -> int:
        """Insert the ticks due at ``now`` with their tasks: the number of tasks made (ticks
        another scheduler made first are not counted). A schedule whose firing raises (say,
        its retry_backoff callable) is logged once and tried again at the next pass, the
        others fire meanwhile; a database error ends the pass and drops the connection, and
        the next pass reconnects and reads the newest ticks again."""
        now = self.clock() if now is None else now
        for first_try in (True, False):
            # A connection that worked before may have died while the scheduler slept (a
            # terminated backend, a failover): a tick that comes due then must not wait for a
            # retry a second later (with a period of a second it would be missed), so the
            # pass is done again at once on a fresh connection. Each pass is all or nothing.
            had_connection = self.db is not None and not self.db.closed
            try:
                made, broken = self._pass(now)
                break
            except DB_ERRORS as exc:
                self.close()
                if first_try and had_connection:
                    continue
                self._database_lost(exc)
                self._failed(now, "database")
                return 0
            except Exception as exc:  # never end the thread: the schedules would stop firing
                self.log.error("scheduler_failed", error=describe(exc))
                self._failed(now, "error")
                return 0
        self._broken = broken
        self._prev_pass = now
        self.observer.scheduled(made)
        if broken:
            self._failed_at = now  # tried again soon
            self.observer.scheduler_skipped("error")
        else:
            self._failed_at = None
        return made

    def _pass(self, now: datetime) -> tuple[int, set[str]]:
        """One pass over the schedules: the tasks made, and the schedules whose firing raised
        (not a database error: those end the pass)."""
        db = self._ensure()
        last = self._last
        if last is None:
            last = self._last = WorkerQueries.last_ticks(db, list(self.definitions))
        made = 0
        broken: set[str] = set()
        for name, definition in self.definitions.items():
            try:
                made += self._fire(db, name, definition, last, now)
            except DB_ERRORS:
                raise
            except Exception as exc:  # this schedule's own problem: fire the others
                if name not in self._broken:
                    self.log.error("schedule_failed", task=name, error=describe(exc))
                broken.add(name)
        return made, broken

    def _fire(
        self,
        db: psycopg.Connection[Any],
        name: str,
        definition: TaskDefinition[Any, Any],
        last: dict[str, datetime],
        now: datetime,
    ) -> int:
        schedule = definition.schedule
        assert schedule is not None
        ticks = due_ticks(schedule, last.get(name), now, self._prev_pass)
        if not ticks:
            return 0
        config = definition.config
        made = WorkerQueries.insert_ticks(
            db,
            name,
            ticks,
            new_task_ids(len(ticks)),
            queue=config.queue,
            priority=config.priority,
            args_json=schedule.payload_json or "null",
            max_retries=config.max_retries,
            timeout_seconds=config.timeout_seconds,
            backoff_seconds=config.backoff_schedule(),
        )
        # the ticks not made were recorded by another scheduler: recorded all the same
        last[name] = max(ticks[-1], last.get(name, ticks[-1]))
        if made:
            self.log.debug("schedule_fired", task=name, ticks=[t.isoformat() for t in made])
        return len(made)

    def prune(self, now: datetime) -> int:
        """Delete old tick rows (the thread does, every `PRUNE_EVERY`), so ``schedule_tick``
        holds a catch-up window and a day of each schedule's ticks rather than all of them
        (every(1 s): 86,400 a day); the newest stays. Returns how many were deleted; an
        error is logged and left to the next pass."""
        self._next_prune = now + PRUNE_EVERY
        deleted = 0
        try:
            db = self._ensure()
            for name, definition in self.definitions.items():
                assert definition.schedule is not None
                before = now - definition.schedule.catch_up_window - KEEP_TICKS
                deleted += WorkerQueries.prune_ticks(db, name, before, PRUNE_BATCH)
        except DB_ERRORS:
            self.close()  # (the next pass reconnects and says so, or logs the outage)
        except Exception as exc:
            self.log.error("schedule_ticks_prune_failed", error=describe(exc))
        if deleted:
            self.log.debug("schedule_ticks_pruned", ticks=deleted)
        return deleted

    def _failed(self, now: datetime, why: str) -> None:
        self._failed_at = now
        self._prev_pass = None  # the ticks until the next success are missed ones
        self.close()
        self.observer.scheduler_skipped(why)

    def close(self) -> None:
        """Drop the connection; the next pass reconnects and reads the newest ticks again
        (another scheduler may have fired meanwhile)."""
        super().close()
        self._last = None
