"""The worker's retention service (``--retention 7d``): deletes finished tasks older than that,
and their runs, a little at a time on the upkeep thread.

It shares that thread (and its connection) with the heartbeat, so one pass never takes more
than ``budget`` seconds (plus the one short statement under way when the budget runs out): a
heartbeat is never late because of it. The walk of the table (`PruneWalk`) goes on where the
previous pass left it; once a walk has reached the end of the table, the service rests
``rest`` seconds before starting the next one, so an idle table is not scanned over and over.
Tasks that came due during a walk, or were skipped (locked by another transaction, or of a
tree a task of which is still queued or running), are taken by a later walk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..db import WorkerQueries
from ..db.admin import PruneWalk
from ..states import TASK_FINAL

RETENTION_BATCH = 200
"""Tasks deleted per statement: small, so that a step stays well inside the budget."""
RETENTION_SCAN = 2_000
"""Tasks looked at per candidate statement."""
UPKEEP_PRUNE_EVERY = 600.0
"""Seconds between two `prune_upkeep` passes of the rescuer (with or without --retention)."""


def prune_upkeep(db: psycopg.Connection[Any], log: Any, *, workers: bool = True) -> bool:
    """Delete the minute tallies older than a day (queue_minute) and, with ``workers``, the
    rows of workers that stopped or were declared lost more than 7 days ago: both tables would
    otherwise only grow. Logs ``upkeep_pruned`` when it deleted anything. Returns False if the
    role may not delete worker rows (docs/security.md): the caller stops asking."""
    minutes = WorkerQueries.prune_minutes(db)
    ended = 0
    allowed = True
    if workers:
        try:
            ended = WorkerQueries.prune_workers(db)
        except psycopg.errors.InsufficientPrivilege:
            allowed = False
            log.info(
                "worker_rows_kept",
                reason="this role may not delete from the worker table (docs/security.md); "
                "old worker rows stay",
            )
    if minutes or ended:
        log.info("upkeep_pruned", tally_rows=minutes, workers=ended)
    return allowed


class Retention:
    """Deletes finished tasks (every final status) older than ``older_than`` seconds, at most
    ``budget`` seconds per `run_once`, resting ``rest`` seconds after each full walk."""

    def __init__(
        self,
        older_than: float,
        log: Any,
        *,
        rest: float = 60.0,
        budget: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.older_than = older_than
        self.log = log
        self.rest = rest
        self.budget = budget
        self.clock = clock
        self.resting_until = float("-inf")
        """`clock` time before which `run_once` does nothing."""
        self._walk = self._new_walk()

    def _new_walk(self) -> PruneWalk:
        return PruneWalk(
            self.older_than, sorted(TASK_FINAL), batch=RETENTION_BATCH, scan=RETENTION_SCAN
        )

    def run_once(self, db: psycopg.Connection[Any], now: float) -> int:
        """One pass on ``db`` (autocommit): steps of the walk until ``budget`` seconds have
        gone or the walk ends (then rest). ``now`` is a reading of `clock`. Returns the tasks
        deleted; logs ``tasks_pruned`` when there were any. psycopg errors propagate (the
        walk goes on after the last step that worked)."""
        if now < self.resting_until:
            return 0
        deadline = self.clock() + self.budget
        deleted = 0
        try:
            while True:
                deleted += self._walk.step(db)
                if self._walk.done:
                    self._walk = self._new_walk()
                    self.resting_until = self.clock() + self.rest
                    break
                if self.clock() >= deadline:
                    break
        finally:
            if deleted:
                self.log.info("tasks_pruned", tasks=deleted)
        return deleted
