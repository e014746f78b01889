"""Cancels of tasks this worker holds: asked for on the control channel (a NOTIFY naming this
worker and the task) or found by the heartbeat (a NOTIFY missed while the LISTEN connection was
down), and carried out by the dispatch loop.

Where the attempt is decides what is done:

- ready (claimed, not handed to an executor): it ends at once as a ``canceled`` run that never
  began;
- running (the head of an executor): the executor is killed as for a timeout and a fresh one
  started; the run is recorded ``canceled`` (not retryable) and the jobs queued behind it run
  elsewhere. ``on_error`` is not called: a cancel is the caller's decision, not a failure;
- queued behind a running head: the executor is asked to hand back what it has not started
  (a take-back); once back among the ready jobs, it ends as above;
- finished, handed back, or being written: nothing (the database ends the task ``canceled``
  whatever the write says, since the cancel was recorded first);
- unknown: kept for `PENDING_SECONDS` (the claim that holds it may still be on its way), then
  dropped.

The loop pays one attribute check per step while nothing was asked for.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..states import RunStatus
from .ledger import Ledger
from .protocol import Job

PENDING_SECONDS = 10.0
"""How long a cancel for a task this worker does not hold (yet) is kept."""

RECHECK_SECONDS = 0.05
"""How often cancels still pending are looked at again (also after every claim)."""

TAKE_BACK_AGAIN = 0.5
"""A take-back asked for a canceled job queued behind a running one, and unanswered, is asked
again after this long."""

CANCELED_MESSAGE = "the task was canceled before this attempt started"

_DONE, _WAIT, _UNKNOWN = object(), object(), object()  # what `Cancels._act` found


class Cancels:
    """Cancels requested for this worker's tasks, until they are carried out."""

    def __init__(
        self,
        ledger: Ledger,
        stop_head: Callable[[int, Job], bool],
        take_back: Callable[[int], None],
        stats: dict[str, int],
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        behind_heads_run: bool = False,
    ) -> None:
        self.ledger = ledger
        self._stop_head = stop_head  # ExecutorPool.cancel_head
        # A pool whose executors run async tasks side by side (`ExecutorPool.running`) has
        # started jobs behind its heads too, which its cancel_head stops.
        self._behind_heads_run = behind_heads_run
        self._take_back = take_back  # ExecutorPool.take_back
        self.stats = stats
        self.log = log
        self.clock = clock
        self._lock = threading.Lock()
        self._inbox: list[uuid.UUID] = []  # requested, not yet seen by the loop
        self.wanted = False  # the inbox holds something (read without the lock: a hint)
        self.pending: dict[uuid.UUID, float] = {}  # task id -> when to give up (monotonic)
        self._asked: dict[uuid.UUID, float] = {}  # take-backs asked for, by task id: when
        self.next_check = math.inf  # when pending cancels are looked at again (monotonic)
        self._claimed = 0  # stats["claimed"] at the last look: a claim landed since

    def request(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Ask for these tasks to be canceled (from any thread; the caller wakes the loop)."""
        with self._lock:
            self._inbox.extend(task_ids)
            self.wanted = True

    def step(self) -> None:
        """The loop's step: carry out what was requested, where the attempts are now."""
        if not self.wanted and not self.pending:
            return
        now = self.clock()
        if self.wanted:
            with self._lock:
                ids, self._inbox = self._inbox, []
                self.wanted = False
            for task_id in ids:
                self.pending.setdefault(task_id, now + PENDING_SECONDS)
        elif (
            not self._asked  # (a job taken back must be caught before it is dispatched again)
            and now < self.next_check
            and self.stats["claimed"] == self._claimed
        ):
            return
        self._claimed = self.stats["claimed"]
        for task_id, give_up in list(self.pending.items()):
            found = self._act(task_id, now)
            if found is _DONE or (found is _UNKNOWN and now >= give_up):
                del self.pending[task_id]
                self._asked.pop(task_id, None)
        self.next_check = now + RECHECK_SECONDS if self.pending else math.inf

    def _act(self, task_id: uuid.UUID, now: float, again: bool = True) -> object:
        """Do what the attempt's place asks for: `_DONE` when nothing more is to be done,
        `_WAIT` while a take-back is awaited, `_UNKNOWN` when this worker does not hold it."""
        ledger = self.ledger
        for i, job in enumerate(ledger.ready):
            if job.task_id == task_id:
                del ledger.ready[i]
                ledger.finish(
                    job, RunStatus.CANCELED, False, None, "TaskCanceled", CANCELED_MESSAGE, None
                )
                self.log.info(
                    "task_canceled",
                    task_id=str(task_id),
                    task_name=job.task_name,
                    attempt=job.attempt,
                    stage="claimed",
                )
                return _DONE
        for slot, jobs in enumerate(ledger.assigned):
            for position, job in enumerate(jobs):
                if job.task_id != task_id:
                    continue
                if position == 0:
                    if self._stop_head(slot, job):
                        return _DONE
                    # It ended (or was handed back) meanwhile: look where it is now.
                    return self._act(task_id, now, again=False) if again else _WAIT
                # Behind the head: running too where async tasks run side by side (stopped
                # as a head is, if it has started); else taken back.
                if self._behind_heads_run and self._stop_head(slot, job):
                    return _DONE
                asked = self._asked.get(task_id)
                if asked is None or now >= asked + TAKE_BACK_AGAIN:
                    self._asked[task_id] = now
                    self._take_back(slot)
                return _WAIT
        return _DONE if self._written_or_on_its_way(task_id) else _UNKNOWN

    def _written_or_on_its_way(self, task_id: uuid.UUID) -> bool:
        """Whether the attempt ended or goes back unstarted: the database decides the rest."""
        ledger = self.ledger
        if any(r.task_id == task_id for r in ledger.finished):
            return True
        if any(j.task_id == task_id for j in ledger.giveback):
            return True
        for batch in ledger.writing:
            if any(r.task_id == task_id for r in batch.finished):
                return True
            if any(j.task_id == task_id for j in batch.giveback):
                return True
        return False
