"""Upkeep: the worker's heartbeat, and the rescue of tasks held by workers whose heartbeat is
stale. `Maintenance.run_once(db, now)` does one pass; the Dispatcher calls it when `due`, on the
writer's connection."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from ..config import WorkerOptions
from ..db import WorkerQueries
from .connection import Connections
from .ledger import Ledger


class Maintenance:
    """Heartbeat and rescuer of one worker."""

    def __init__(
        self,
        conns: Connections,
        ledger: Ledger,
        options: WorkerOptions,
        worker_id: uuid.UUID,
        stats: dict[str, int],
        log: Any,
    ) -> None:
        self.conns = conns
        self.ledger = ledger
        self.options = options
        self.worker_id = worker_id
        self.stats = stats
        self.log = log
        self.next_run = 0.0  # monotonic
        self._next_full_rescue = 0.0  # see WorkerQueries.rescue

    def due(self, now: float) -> bool:
        return now >= self.next_run

    def schedule(self, now: float) -> None:
        """The next pass is one heartbeat interval after ``now``."""
        self.next_run = now + self.options.heartbeat_interval

    def run_once(self, db: psycopg.Connection[Any], now: float) -> None:
        """Beat, and requeue what stale workers hold. Database errors are the caller's."""
        if not WorkerQueries.heartbeat(db, self.worker_id):
            # Another worker declared us lost (we were away too long) and requeued our
            # tasks; our late results will be ignored. Carry on as a fresh registration.
            self.log.warning("worker_declared_lost_reregistering")
            self.conns.register(db)
        full = now >= self._next_full_rescue
        workers, tasks = WorkerQueries.rescue(db, self.options.stale_after, full=full)
        if full:
            self._next_full_rescue = now + self.options.stale_after
        if tasks or workers:
            self.stats["rescued"] += tasks
            self.ledger.claim_wanted = True
            self.log.warning("lost_tasks_requeued", workers=workers, tasks=tasks)
