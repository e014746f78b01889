"""How many attempts this worker ended, per minute, queue and way they ended, with the seconds
they ran: counted in memory as each batch of outcomes is written, and added to the
``queue_minute`` table with the next heartbeat (one upsert), so throughput never scans task or
task_run. A worker killed with SIGKILL loses at most one heartbeat's counts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from ..db import FinishedRow, WorkerQueries

Key = tuple[int, str, str]
"""(minute as epoch seconds // 60, queue, run status)."""


class Tally:
    """Counts of ended attempts, added to by the writer and drained by the heartbeat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, list[float]] = {}

    def add(self, rows: Sequence[FinishedRow]) -> None:
        """Count written outcomes: one lock per batch, one dict update per row."""
        with self._lock:
            counts = self._counts
            for r in rows:
                key = (int(r.finished_at // 60), r.queue, r.status)
                ran = 0.0 if r.started_at is None else max(r.finished_at - r.started_at, 0.0)
                got = counts.get(key)
                if got is None:
                    counts[key] = [1, ran]
                else:
                    got[0] += 1
                    got[1] += ran

    def drain(self) -> dict[Key, list[float]]:
        """Everything counted so far, and start again from nothing."""
        with self._lock:
            out, self._counts = self._counts, {}
        return out

    def put_back(self, counts: dict[Key, list[float]]) -> None:
        """Counts a write did not store: they go with the next one."""
        with self._lock:
            for key, (n, ran) in counts.items():
                got = self._counts.setdefault(key, [0, 0.0])
                got[0] += n
                got[1] += ran

    def flush(self, conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> int:
        """Add the counts to ``queue_minute`` under ``worker_id``; returns the rows written.
        On a database error the counts stay for the next flush, and the error propagates."""
        counts = self.drain()
        if not counts:
            return 0
        try:
            WorkerQueries.record_minutes(conn, worker_id, counts)
        except BaseException:
            self.put_back(counts)
            raise
        return len(counts)


_tallies: dict[uuid.UUID, Tally] = {}
_tallies_lock = threading.Lock()


def tally_for(worker_id: uuid.UUID) -> Tally:
    """The tally of worker ``worker_id`` in this process (its writer counts into it, its
    heartbeat flushes it)."""
    with _tallies_lock:
        return _tallies.setdefault(worker_id, Tally())


def forget(worker_id: uuid.UUID) -> None:
    """The worker stopped: drop its tally."""
    with _tallies_lock:
        _tallies.pop(worker_id, None)
