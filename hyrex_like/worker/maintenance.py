"""Upkeep off the dispatch loop: the worker's heartbeat (which also finds cancels of its tasks
whose NOTIFY it missed), the rescue of tasks held by workers whose heartbeat went stale, and
(with --retention) the deletion of old finished tasks, and that of expired ``hy.kv`` keys.
Each heartbeat also adds the worker's tallies of ended attempts to ``queue_minute``
(`hyrex_like.worker.tally`); the rescuer deletes tallies older than a day and the rows of
workers that ended more than 7 days ago.

All run on a thread and a connection of their own, so a dead or slow database link never
stalls dispatch, results or timeouts, and a busy loop never delays a heartbeat. The rescue
scan and the retention run on one elected worker per schema at a time: the one holding a
session advisory lock, which PostgreSQL releases when that worker's connection ends, so another
worker takes over at its next pass. `Maintenance.run_once` is one pass, callable without the
thread in tests, with the clock injected.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from ..config import WorkerOptions
from ..db import WorkerQueries
from ..observer import WorkerObserver
from .connection import DB_ERRORS, describe
from .kv_cleanup import KVCleanup
from .retention import UPKEEP_PRUNE_EVERY, Retention, prune_upkeep
from .service import ThreadService
from .tally import tally_for


class Maintenance(ThreadService):
    """Heartbeat and (when elected) rescuer of one worker."""

    thread_name = "hyrex-upkeep"
    event = "upkeep"

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        register: Callable[[psycopg.Connection[Any]], None],
        options: WorkerOptions,
        worker_id: uuid.UUID,
        log: Any,
        *,
        on_rescued: Callable[[int], None] = lambda tasks: None,
        on_cancel: Callable[[list[uuid.UUID]], None] = lambda task_ids: None,
        observer: WorkerObserver | None = None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(connect, log)
        self._register = register
        self.options = options
        self.worker_id = worker_id
        self._on_rescued = on_rescued
        self._on_cancel = on_cancel
        self.observer = observer or WorkerObserver()
        self.clock = clock
        self.retention = retention  # (--retention) run by the elected rescuer after its scan
        self.kv_cleanup = KVCleanup(log, clock=clock)  # expired hy.kv keys, by the rescuer too
        self.leader = False  # holds the rescuer lock on `db`
        self.tally = tally_for(worker_id)  # what the writer counted, flushed by each beat
        self._next_upkeep_prune = 0.0  # (`clock` time) old tallies and worker rows
        self._prune_workers = True  # False once the role was refused (docs/security.md)
        self._next_full_rescue = 0.0  # see WorkerQueries.rescue

    # ---------------------------------------------------------------- the thread

    def _serve(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.run_once(started)
            left = started + self.options.heartbeat_interval - self.clock()
            self._stop.wait(max(0.0, left))

    # ---------------------------------------------------------------- one pass

    def run_once(self, now: float | None = None) -> None:
        """Beat; if elected (or elected now), requeue what stale workers hold. Database errors
        end the pass and drop the connection; the next pass reconnects."""
        now = self.clock() if now is None else now
        try:
            db = self._ensure()
            self._beat(db)
            if not self.leader:
                self.leader = WorkerQueries.try_lead_rescue(db)
                if self.leader:
                    self.log.info("rescuer_elected")
            if self.leader:
                self._rescue(db, now)
                if self.retention is not None:  # one worker per schema prunes, briefly
                    self.retention.run_once(db, now)
                self.kv_cleanup.run_once(db, now)
                if now >= self._next_upkeep_prune:
                    self._next_upkeep_prune = now + UPKEEP_PRUNE_EVERY
                    self._prune_workers = prune_upkeep(db, self.log, workers=self._prune_workers)
            else:
                self.observer.maintenance_skipped("not_leader")
        except DB_ERRORS as exc:
            self._database_lost(exc)
            self.observer.maintenance_skipped("database")
        except Exception as exc:  # never end the thread: a worker that stops beating is rescued
            self.log.error("upkeep_failed", error=describe(exc))  # and its tasks run twice
            self.close()
            self.observer.maintenance_skipped("error")

    def _beat(self, db: psycopg.Connection[Any]) -> None:
        alive, cancel = WorkerQueries.heartbeat(db, self.worker_id)
        if not alive:
            # Another worker declared us lost (we were away too long) and requeued our
            # tasks; our late results will be ignored. Carry on as a fresh registration.
            self.log.warning("worker_declared_lost_reregistering")
            self._register(db)
        self.observer.heartbeat(alive)
        self.tally.flush(db, self.worker_id)
        if cancel:  # cancels of our running tasks whose NOTIFY we may have missed
            self._on_cancel(cancel)

    def _rescue(self, db: psycopg.Connection[Any], now: float) -> None:
        full = now >= self._next_full_rescue
        workers, tasks = WorkerQueries.rescue(db, self.options.stale_after, full=full)
        if full:
            self._next_full_rescue = now + self.options.stale_after
        if tasks or workers:
            self.log.warning("lost_tasks_requeued", workers=workers, tasks=tasks)
            self._on_rescued(tasks)
        self.observer.rescued(workers, tasks)

    def close(self) -> None:
        """Drop the connection (and with it the rescuer's lock, handed over at once if the
        connection still works)."""
        if self.db is not None:
            if self.leader and not self.db.closed:
                try:
                    WorkerQueries.release_rescue(self.db)
                except DB_ERRORS:
                    pass  # the lock ends with the session anyway
        super().close()
        self.leader = False
