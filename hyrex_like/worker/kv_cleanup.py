"""Deleting expired ``hy.kv`` keys: a step of the elected rescuer's upkeep pass.

Expired keys are never read back (every read compares the expiry with the server's clock), so
this only reclaims their rows, in batches of `KV_CLEANUP_BATCH` (each its own short statement
on the upkeep connection, autocommit), for at most ``budget`` seconds per pass: the heartbeat
on the same thread is never late because of it. Once a batch comes back short (nothing more
has expired), the cleanup rests ``rest`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..db.kv import KV_CLEANUP_BATCH, delete_expired

REFUSED_REST = 3600.0
"""Seconds the clean-up rests after the database refused it (no DELETE on ``kv``)."""


class KVCleanup:
    """Deletes expired kv keys, at most ``budget`` seconds per `run_once`, resting ``rest``
    seconds once none is left."""

    def __init__(
        self,
        log: Any,
        *,
        rest: float = 30.0,
        budget: float = 0.1,
        batch: int = KV_CLEANUP_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.rest = rest
        self.budget = budget
        self.batch = batch
        self.clock = clock
        self.resting_until = float("-inf")
        """`clock` time before which `run_once` does nothing."""

    def run_once(self, db: psycopg.Connection[Any], now: float) -> int:
        """One pass on ``db``: the keys deleted (logged as ``kv_expired_deleted`` when any).
        ``now`` is a reading of `clock`. psycopg errors propagate."""
        if now < self.resting_until:
            return 0
        deadline = self.clock() + self.budget
        deleted = 0
        try:
            while True:
                try:
                    batch = delete_expired(db, self.batch)
                except psycopg.errors.InsufficientPrivilege as exc:
                    # a role the store's grants were left out of (docs/security.md): said once
                    # an hour, not at every heartbeat, and never in the way of the rescue
                    self.log.warning("kv_cleanup_refused", error=str(exc).strip())
                    self.resting_until = self.clock() + REFUSED_REST
                    break
                deleted += batch
                if batch < self.batch:
                    self.resting_until = self.clock() + self.rest
                    break
                if self.clock() >= deadline:
                    break
        finally:
            if deleted:
                self.log.info("kv_expired_deleted", keys=deleted)
        return deleted
