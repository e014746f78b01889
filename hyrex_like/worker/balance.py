"""Which executor gets which ready job, and when jobs move away from a long task.

No job waits behind a long task while it could run elsewhere: batches hold only what starts
within ``busy_after`` at the pace seen so far (`Pace`); an executor whose task has run longer
gets nothing more and hands back what it holds unstarted (a take-back: `TAKE_BACK_SIGNAL`,
asked once per task and again if unanswered); ready jobs that no executor here can start for
5x ``busy_after`` go back to the queue for another worker; and claims count no room for an
executor busy with a long task (`Ledger.room`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..config import WorkerOptions
from ..observer import WorkerObserver
from .ledger import Ledger
from .pacing import Pace
from .pipe import ExecutorHandle
from .protocol import TOP_UP_BYTES, Job, encode_batch
from .spawn import Spawner

HAND_OVER_FACTOR = 5
"""Ready jobs go back to the queue once every executor's task has run this many times
``busy_after`` (1 s by default), and a take-back left unanswered is asked again as often."""


class Balancer:
    """Sends ready jobs to the executors of ``executors`` (the pool's list), and moves them
    away from long tasks."""

    def __init__(
        self,
        executors: list[ExecutorHandle],
        ledger: Ledger,
        spawner: Spawner,
        options: WorkerOptions,
        log: Any,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.observer = observer or WorkerObserver()
        self.executors = executors
        self.ledger = ledger
        self.spawner = spawner
        self.options = options
        self.log = log
        self._debug = options.log_level == "debug"
        # Most jobs an executor holds: with async lanes, enough to fill them and a batch more.
        width = options.async_concurrency
        self.cap = options.handoff if width == 1 else options.handoff + 2 * width
        self.lanes = width > 1
        self.pace = Pace(options.busy_after, self.cap)
        ledger.depth = self.pace.depth()
        self.hand_over_after = HAND_OVER_FACTOR * options.busy_after
        self.next_at = math.inf  # when `rebalance` next has something to do (monotonic)

    def dispatch(self) -> None:
        """Hand ready jobs to executors: a batch to each idle one, spread evenly, and a top-up
        to a busy one whose queue runs short, so it never waits for the parent's round trips.
        A batch holds what starts within ``busy_after`` (`Pace.fit`); an executor busy with a
        long task gets nothing (see `rebalance`)."""
        now = time.monotonic()
        # (inf with jobs ready: a claim landed while every executor was busy with a long task)
        if now >= self.next_at or (self.ledger.ready and self.next_at == math.inf):
            self.rebalance(now)
        ledger = self.ledger
        if not ledger.ready:
            return
        prefetch = self.cap
        # (with async lanes: topped up by at least half a batch at a time, up to two batches
        # unread, still far below a pipe buffer: its loop reads the pipe as it runs)
        top_up_at, unread = (
            (prefetch - max(1, self.options.handoff // 2), 3) if self.lanes else (prefetch // 2, 1)
        )
        pace = self.pace
        assigned = ledger.assigned
        long_at = ledger.long_at
        open_: list[tuple[ExecutorHandle, float]] = []  # with the work queued there
        for ex in self.executors:
            held = assigned[ex.index]
            if not ex.ready:
                continue
            if not held:
                open_.append((ex, 0.0))
            # At most one unread batch may sit in the pipe, and a small one, so a send can
            # never block on an executor busy with a long task.
            elif (
                len(ex.batches) <= unread
                and len(held) <= top_up_at
                and now < long_at[ex.index]
                and ex.head_started is not None
            ):
                # (with async lanes the cap bounds the wait instead: a whole next round
                # of lanes waits there, so freed lanes start at once)
                ahead = 0.0 if self.lanes else pace.ahead(held, now - ex.head_started)
                if ahead * 2 < pace.horizon:
                    open_.append((ex, ahead))
        if not open_:
            return
        share = max(1, min(prefetch, math.ceil(len(ledger.ready) / len(open_))))
        for ex, ahead in sorted(open_, key=lambda e: len(assigned[e[0].index])):
            if not ledger.ready:
                break
            held = assigned[ex.index]
            room = min(share, prefetch - len(held))
            if not self.lanes:
                room = pace.fit(ledger.ready, room, ahead)
            batch = ledger.next_batch(room, TOP_UP_BYTES if held else None)
            if not batch:  # one big job: wait until it is idle
                continue
            if not held:
                self.head_started(ex, now)
            ledger.assign(ex.index, batch)
            ex.batches.append(len(batch))
            self.observer.dispatched(ex.index, len(batch))
            try:
                ex.conn.send_bytes(encode_batch(batch))
            except OSError:
                pass  # the executor died; reap hands its jobs on
            if self._debug:
                for job in batch:
                    self.log.debug(
                        "task_started",
                        task_id=str(job.task_id),
                        task_name=job.task_name,
                        attempt=job.attempt,
                        executor=ex.process.pid,
                    )

    def head_started(self, ex: ExecutorHandle, now: float) -> None:
        """``ex`` began a new head at ``now``: from when it counts as long."""
        ex.head_started = now
        long_at = self.ledger.long_at[ex.index] = now + self.pace.horizon
        if long_at < self.next_at:
            self.next_at = long_at

    def long_from(self, slot: int, began: float) -> None:
        """``slot``'s executor counts as long from ``busy_after`` after ``began`` (`running`)."""
        long_at = self.ledger.long_at[slot] = began + self.pace.horizon
        if long_at < self.next_at:
            self.next_at = long_at

    def taken_back(self, ex: ExecutorHandle, jobs: list[Job]) -> None:
        """``ex`` handed ``jobs`` back unstarted: they run next, maybe on another worker."""
        self.ledger.taken_back(jobs)
        self.next_at = 0.0  # (handed over if no executor here can start them soon)
        if self._debug:
            self.log.debug("tasks_taken_back", count=len(jobs), executor=ex.process.pid)

    def rebalance(self, now: float) -> None:
        """Take back what waits behind a long task (once per task, asked again if it went
        unanswered), and hand the ready jobs over to other workers once no executor here can
        start them soon."""
        ledger = self.ledger
        next_at = math.inf
        blocked_since = -math.inf  # (when the last executor stopped taking work)
        open_ = False
        for ex in self.executors:
            held = ledger.assigned[ex.index]
            long_at = ledger.long_at[ex.index]
            if not ex.ready:
                blocked_since = max(blocked_since, ex.born)  # starting: soon open
                continue
            if not held or ex.head_started is None:
                open_ = True
                continue
            if now < long_at:
                open_ = True
                next_at = min(next_at, long_at)
                continue
            blocked_since = max(blocked_since, ex.head_started)
            if len(held) > 1:
                again = ex.took_back_at + self.hand_over_after
                if ex.took_back_for is not held[0] or now >= again:
                    ex.took_back_for, ex.took_back_at = held[0], now
                    again = now + self.hand_over_after
                    self.spawner.take_back(ex)
                next_at = min(next_at, again)
        if ledger.ready and not open_ and not ledger.stopping:
            hand_over_at = blocked_since + self.hand_over_after
            if now >= hand_over_at:
                self._hand_over()
            else:
                next_at = min(next_at, hand_over_at)
        self.next_at = next_at

    def _hand_over(self) -> None:
        jobs = list(self.ledger.ready)
        self.ledger.hand_over()
        self.log.info(
            "tasks_handed_over",
            count=len(jobs),
            task_ids=[str(j.task_id) for j in jobs],
            reason=f"every executor has been busy for over {self.hand_over_after:g}s; queued "
            "again for a worker that can start them sooner",
        )
