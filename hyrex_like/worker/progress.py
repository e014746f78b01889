"""The progress writer: what running tasks report with ``update_progress``, written off the
dispatch loop, coalesced.

Executors send progress items over their pipes (`progress_out.ProgressOut`, at most every 0.1 s
each); the dispatcher's reads leave them in each `ExecutorHandle.progress` deque and do nothing
else with them. This service's thread takes them every `INTERVAL` seconds, keeps the latest
value per (task, attempt), and writes those changed since its last pass in one statement
(`WorkerQueries.write_progress`) on a connection of its own, opened at the first progress.

Each value is written only onto the attempt that reported it (the statement checks the row's
attempt count), so a late value of an earlier attempt never covers a newer attempt's. Rows
another transaction holds are skipped by the statement and tried again at the next pass; a
value still not written after `GIVE_UP_PASSES` passes belongs to an attempt that is over (a
newer attempt holds the row, or the task is gone) and is dropped. A database outage costs
only progress writes: logged once, the values kept (newest wins) and written when it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..db import WorkerQueries
from .connection import DB_ERRORS, describe
from .pipe import ExecutorHandle
from .service import ThreadService

INTERVAL = 0.5
"""Seconds between two passes: at most one progress write per task attempt per interval."""

GIVE_UP_PASSES = 10
"""Passes a value may go unwritten (its row locked or its attempt over) before it is dropped."""

Key = tuple[bytes, int]  # (task id bytes, attempt)


class ProgressWriter(ThreadService):
    """Writes the latest progress of the attempts a worker runs, at most every `INTERVAL`."""

    thread_name = "hyrex-progress"
    event = "progress"

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        executors: list[ExecutorHandle],
        log: Any,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(connect, log)
        self._executors = executors  # the pool's list: its handles are replaced in place
        self._seen: dict[int, ExecutorHandle] = {}  # last pass's handles, by id()
        self.interval = interval
        self.clock = clock
        # unwritten values: key -> [json text, passes it went unwritten]
        self.pending: dict[Key, list[Any]] = {}
        self.writes = 0  # statements run (for tests and benchmarks)
        self.written = 0  # rows written

    def _serve(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.run_once()
            self._stop.wait(max(0.0, started + self.interval - self.clock()))
        self.run_once()  # what came in since: a stopping worker's last values

    def collect(self) -> None:
        """Take the items the dispatcher has read from every executor's pipe (and from the
        handles replaced since the last pass), newest value per attempt winning."""
        current = {id(ex): ex for ex in list(self._executors)}
        handles = list(current.values())
        handles += [ex for k, ex in self._seen.items() if k not in current]
        self._seen = current
        pending = self.pending
        for ex in handles:
            box = ex.progress
            while box:
                try:
                    _, key, attempt, data = box.popleft()
                except IndexError:  # pragma: no cover - only this thread takes from it
                    break
                pending[(key, attempt)] = [data, 0]

    def run_once(self) -> None:
        """One pass: collect, then write what is unwritten in one statement. Database errors
        end the pass and drop the connection; the values stay for the next pass."""
        self.collect()
        if not self.pending:
            return
        items = list(self.pending.items())
        try:
            db = self._ensure()
            written = WorkerQueries.write_progress(
                db, [(key, attempt, v[0]) for (key, attempt), v in items]
            )
        except DB_ERRORS as exc:
            self._database_lost(exc)
            return
        except Exception as exc:  # never end the thread over one bad pass
            self.log.error("progress_write_failed", error=describe(exc))
            self.close()
            return
        self.writes += 1
        self.written += len(written)
        done = {u.bytes for u in written}
        pending = self.pending
        for key, value in items:
            if key[0] in done:
                del pending[key]
            else:
                value[1] += 1
                if value[1] >= GIVE_UP_PASSES:
                    del pending[key]
