"""The claimer: decides when and how much to claim, runs the claim on its own thread and
connection, and puts what it claimed in the ledger.

One statement claims a batch and opens its run rows. At most one claim is in flight; meanwhile
the loop goes on, so each claim's batch grows with the load.

Paused queues are never claimed. Limited queues (a concurrency limit across every worker) are
claimed by a statement of their own, before the others and only as many as its executors idle
now can start (one while none is: a worker busy with a deep queue still takes its turn), so a
worker never holds many of a limited queue's slots behind other work. Each claim says
which limited queues this worker serves, so a worker runs that statement only while there are
some; when one of their tasks ends here, the write wakes every worker (`limited_ids`).
"""

from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..config import WorkerOptions
from ..db import WorkerQueries
from ..observer import WorkerObserver
from ..states import RunStatus
from .connection import DB_ERRORS, Connections, wait_for
from .ledger import Ledger
from .protocol import Job

_COMPLETED = RunStatus.COMPLETED.value

CLAIM_MAX = 1_000  # rows per claim statement
AHEAD_SECONDS = 0.2  # auto prefetch: hold at most what starts within this long at the pace seen
FIRST_CLAIM_MAX = 100  # until something was claimed: executors start on it ~15 ms sooner
DUE_MARGIN = 0.001  # wake this long after a waiting task is due, never before (clocks, rounding)
# A limited queue at its limit is claimed again when one of its tasks ends (their worker's
# write wakes every worker) and, should that wake-up be missed, after this long.
BLOCKED_RECHECK = 1.0


@dataclass
class _Round:
    """One claim: what it asked for, and what came of it."""

    db: psycopg.Connection[Any]
    claim: int
    generation: int
    limited_max: int = 0  # what a limited claim may take at most
    limited: list[str] | None = None  # the limited queues this worker serves, as of this claim
    limited_claimed: int = 0  # of `claimed`, those from limited queues (the first ones)
    blocked: bool = False  # a limited queue with tasks ready was at its limit
    limited_only: bool = False  # a slot of a limited queue was freed: only the limited claim
    paused: set[str] = field(default_factory=set)  # queues paused while it ran: given back
    claimed: list[Job] | None = None
    due: float | None = None  # seconds until the next waiting task is due (a short claim's)
    began: float = 0.0  # monotonic, just before the statement was sent (what ``due`` counts from)
    seconds: float = 0.0  # the claim statement's time
    error: BaseException | None = None
    future: Future[_Round] | None = None  # set while it runs on the claimer's thread


class Claimer:
    """Claims tasks into the ledger's ready queue."""

    def __init__(
        self,
        ledger: Ledger,
        conns: Connections,
        options: WorkerOptions,
        worker_id: uuid.UUID,
        task_names: list[str],
        stats: dict[str, int],
        log: Any,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.observer = observer or WorkerObserver()
        self.ledger = ledger
        self.conns = conns
        self.options = options
        self.worker_id = worker_id
        self.task_names = task_names
        self.queues = list(options.queues)
        self.stats = stats
        self.log = log
        self.round: _Round | None = None
        self.next_poll = 0.0
        # When the next waiting task this worker could run is due (monotonic; inf: none known),
        # from the last short claim: an idle worker claims then, not at its next poll.
        self.next_due = math.inf
        # auto prefetch: extra room while claims come back full (a deep queue), sized by the
        # pace tasks finish at, so claims and writes are batches of hundreds, not of 32
        self.ahead = 0
        self._auto = options.prefetch is None
        self._rate = 0.0  # attempts finished per second, smoothed
        self._rate_at = (time.monotonic(), 0)
        self._debug = options.log_level == "debug"
        self.limited: list[str] = []  # limited queues this worker serves (from the last claim)
        # tasks claimed from limited queues, until their end is written (see `Completer`)
        self.limited_ids: set[uuid.UUID] = set()
        # a worker's write freed a slot of a limited queue: claim from the limited queues (the
        # others need no new claim for it)
        self.limited_wanted = False

    def poll(self, now: float) -> None:
        """Every --poll-interval, claim even without a NOTIFY (one may have been missed); and
        when the next waiting task is due (delayed, or waiting out a retry's backoff)."""
        if now >= self.next_poll:
            self.ledger.claim_wanted = True
            self.next_poll = now + self.options.poll_interval
        if now >= self.next_due:
            self.ledger.claim_wanted = True
            self.next_due = math.inf

    def size(self) -> int:
        """How many tasks to claim now (0: not now): only what can start soon (`Ledger.room`),
        so a worker whose executors are all busy with long tasks claims nothing, and what it
        claims never waits long behind them.

        Small claims cost a round trip each: while executors have plenty queued, wait until a
        quarter of the capacity is free; claim whatever fits when they are about to run dry.
        """
        ledger = self.ledger
        if not ledger.claim_wanted or ledger.stopping:
            return 0
        free = ledger.room(time.monotonic(), self.ahead)
        if free <= 0:
            return 0
        capacity = self.options.processes * ledger.depth + self.ahead
        if free * 4 >= capacity or ledger.unstarted() < self.options.processes * 2:
            # A claim is one statement: past ~1,000 rows it takes long enough (~20 ms here)
            # that idle executors wait for it; the next claim follows at once.
            return min(free, CLAIM_MAX if self.stats["claimed"] else FIRST_CLAIM_MAX)
        return 0

    def start(self) -> None:
        """Start a claim on the claimer's thread, if none is in flight and one is wanted."""
        if self.round is not None:
            return
        ledger = self.ledger
        claim = self.size()
        limited_only = False
        if not claim and self.limited_wanted and self.limited and not ledger.stopping:
            claim = min(ledger.room(time.monotonic(), self.ahead), CLAIM_MAX)
            limited_only = claim > 0
        conns = self.conns
        if claim > 0 and conns.ensure() is not None and conns.claim_db is not None:
            # Cleared now, not when the claim ends: a NOTIFY that arrives while it runs may
            # be for a task its snapshot missed, and must bring another claim.
            if not limited_only:
                ledger.claim_wanted = False
            self.limited_wanted = False
            idle = self.options.processes - ledger.running() - len(ledger.ready)
            limited_max = min(claim, max(idle, 1))
            job = _Round(conns.claim_db, limited_max if limited_only else claim, conns.generation)
            job.limited_max = limited_max
            job.limited_only = limited_only
            job.future = conns.run(conns.claimer, conns.claim_db, self._run, job)
            self.round = job
            ledger.claiming = job.claim

    def queue_paused(self, queue: str) -> None:
        """``queue`` was paused: what the claim in flight brings of it goes back unstarted
        (that claim may have read the settings before the pause)."""
        if self.round is not None:
            self.round.paused.add(queue)

    def _run(self, job: _Round) -> _Round:
        """On the claimer's thread."""
        try:
            job.began = time.monotonic()
            began = time.perf_counter()
            limited: list[Job] = []
            if self.limited:
                limited, job.blocked = WorkerQueries.claim_limited(
                    job.db, self.worker_id, self.task_names, self.queues, job.limited_max, Job
                )
                job.limited_claimed = len(limited)
                job.claimed = limited  # (kept should the next statement fail)
            rest = 0 if job.limited_only else job.claim - len(limited)
            if rest > 0:
                claimed, job.due, job.limited = WorkerQueries.claim(
                    job.db, self.worker_id, self.task_names, self.queues, rest, Job
                )
                limited = limited + claimed
            job.claimed = limited
            job.seconds = time.perf_counter() - began
        except DB_ERRORS as exc:
            job.error = exc
        return job

    def _size_ahead(self, full: bool) -> None:
        """Auto prefetch: with a deep queue (full claims), hold what starts within
        `AHEAD_SECONDS` at the pace attempts finish (at most two claims' worth); else nothing
        beyond `Ledger.room`. What cannot start soon is handed over anyway (`Balancer`)."""
        now = time.monotonic()
        done = self.stats[_COMPLETED] + self.stats["failed_attempts"]
        then, before = self._rate_at
        if now - then >= 0.05:
            self._rate = 0.5 * self._rate + 0.5 * (done - before) / (now - then)
            self._rate_at = (now, done)
        self.ahead = min(2 * CLAIM_MAX, int(self._rate * AHEAD_SECONDS)) if full else 0

    def settle(self, deadline: float) -> bool:
        """Take in the claim in flight if it has ended, waiting until ``deadline`` at most.
        False if it is still running."""
        job = self.round
        if job is None:
            return True
        if not wait_for(job.future, deadline):
            return False
        self.round = None
        self.ledger.claiming = 0
        self._apply(job)
        return True

    def _apply(self, job: _Round) -> None:
        if job.claimed is not None:
            self.observer.claimed(job.claim, len(job.claimed), job.seconds)
            if job.limited_only or job.error is not None:
                pass  # (says nothing of the other queues)
            elif job.due is not None:
                # Counted from before the statement was sent: the server's now() is later, so
                # this is at most a round trip early; the margin keeps it from being early at
                # all in practice, and an early claim just finds nothing and asks again.
                self.next_due = job.began + max(0.0, job.due) + DUE_MARGIN
            elif len(job.claimed) < job.claim:
                self.next_due = math.inf  # nothing waits that this worker could run
            self._limited(job)
            claimed = job.claimed
            if job.paused:
                back = [j for j in claimed if j.queue in job.paused]
                claimed = [j for j in claimed if j.queue not in job.paused]
                self.ledger.giveback.extend(back)
            self._take(claimed, job.claim - (len(job.claimed) - len(claimed)))
        else:
            self.ledger.claim_wanted = True  # the claim failed: what it was for is still waiting
        # A claim never outlives its connections (see Connections.ensure); checked anyway.
        if job.error is not None and job.generation == self.conns.generation:
            self.conns.lost(job.error)

    def _limited(self, job: _Round) -> None:
        """Take in what a claim says of the limited queues."""
        assert job.claimed is not None
        self.limited_ids.update(j.task_id for j in job.claimed[: job.limited_claimed])
        if job.limited is not None and job.limited != self.limited:
            if set(job.limited) - set(self.limited):
                self.ledger.claim_wanted = True  # a queue newly limited: claim it now
            self.limited = job.limited
        if job.blocked:
            self.next_due = min(self.next_due, time.monotonic() + BLOCKED_RECHECK)

    def _take(self, jobs: list[Job], asked: int) -> None:
        full = len(jobs) == asked
        if full:  # a full batch means more may be waiting
            self.ledger.claim_wanted = True
        if self._auto:
            self._size_ahead(full)
        self.ledger.claimed(jobs)  # (given back at once if the worker stopped meanwhile)
        if self._debug:
            for job in jobs:
                self.log.debug(
                    "task_claimed",
                    task_id=str(job.task_id),
                    task_name=job.task_name,
                    attempt=job.attempt,
                    queue=job.queue,
                )
        self.stats["claimed"] += len(jobs)
