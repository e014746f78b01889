"""The ledger: every attempt this worker holds, and where it is. The services meet here.

An attempt the worker claimed is marked as running in the database until a write says
otherwise, so the worker must never forget one. It moves through these places:

    claimed --claimed()--> ready --assign()--> assigned[i] --finish()--> finished
                           |  ^                    |  (head: running; the rest wait in order)
                           |  +---taken_back()-----+  (not started: from behind a long task)
                           |                       +--taken_back()/requeue_rest()--> giveback
                           +--begin_stop()/hand_over()-----------------------> giveback
    finished, giveback --take_for_write()--> writing --written()--> gone (in the database)
                                                 +----write_failed()--> back where they were

The claimer adds claims, the executor pool assigns, ends and requeues, the completer writes;
none of them holds an attempt anywhere else.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from ..db import FinishedRow
from ..states import RunStatus
from .protocol import Job

_COMPLETED = RunStatus.COMPLETED
_INTERRUPTED = RunStatus.INTERRUPTED
_CANCELED = RunStatus.CANCELED
_COMPLETED_STR = RunStatus.COMPLETED.value
_INTERRUPTED_STR = RunStatus.INTERRUPTED.value
_CANCELED_STR = RunStatus.CANCELED.value


@dataclass(eq=False)  # compared by identity: `written` removes this very batch
class WriteBatch:
    """What one write carries: attempts to hand back unstarted, attempts that ended."""

    giveback: list[Job] = field(default_factory=list)
    finished: list[FinishedRow] = field(default_factory=list)


class Ledger:
    """The one owner of held attempts, plus the two flags every service reads: whether the
    worker is stopping, and whether another claim is wanted."""

    def __init__(self, processes: int, stats: dict[str, int]) -> None:
        self.stats = stats
        self.ready: deque[Job] = deque()  # claimed, waiting for an executor
        # per executor slot (its index), in the order sent: the head is running
        self.assigned: list[deque[Job]] = [deque() for _ in range(processes)]
        self.finished: list[FinishedRow] = []  # ended, waiting for a write
        self.giveback: list[Job] = []  # never started, to hand back to the queue
        # what the writes under way carry (they may still land, or come back)
        self.writing: list[WriteBatch] = []
        self.claiming = 0  # rows asked for by the claim in flight (0: none in flight)
        self.stopping = False
        self.claim_wanted = True
        # What can start soon, as the executor pool sees it (the claimer sizes claims by it):
        # when each slot's head counts as long (monotonic; inf: none running; no room there
        # from then on), and how many jobs each other executor takes (`Pace.depth`).
        self.long_at: list[float] = [math.inf] * processes
        self.depth = 1

    # ---------------------------------------------------------------- claimed -> ready

    def claimed(self, jobs: list[Job]) -> None:
        """A claim's rows: ready to run, or given back if the worker stopped meanwhile."""
        (self.giveback if self.stopping else self.ready).extend(jobs)

    def begin_stop(self) -> None:
        """From now on nothing new starts: what is ready goes back unstarted."""
        self.stopping = True
        self.giveback.extend(self.ready)
        self.ready.clear()

    # ---------------------------------------------------------------- ready -> assigned

    def next_batch(self, room: int, byte_limit: int | None) -> list[Job] | None:
        """Up to ``room`` ready jobs, in order, whose args stay within ``byte_limit`` (None: no
        limit). None when the first job alone exceeds the limit: it waits for an idle one."""
        ready = self.ready
        batch: list[Job] = []
        size = 0
        while ready and len(batch) < room:
            if byte_limit is not None and batch and size + len(ready[0].args) > byte_limit:
                break
            job = ready.popleft()
            size += len(job.args)
            batch.append(job)
        if byte_limit is not None and size > byte_limit:
            ready.extendleft(reversed(batch))
            return None
        return batch

    def assign(self, slot: int, batch: list[Job]) -> None:
        self.assigned[slot].extend(batch)

    # ---------------------------------------------------------------- assigned -> finished

    def answered(self, slot: int) -> Job:
        """The head of ``slot`` has answered: it leaves the executor."""
        self.long_at[slot] = math.inf
        return self.assigned[slot].popleft()

    def take_out(self, slot: int, key: bytes) -> tuple[int, Job] | None:
        """The job of ``slot`` whose task id is ``key`` (bytes), answered out of order (a
        take-back): its position and itself, or None if the slot holds no such job."""
        jobs = self.assigned[slot]
        wanted = int.from_bytes(key)  # (UUID.int is a plain attribute; .bytes builds bytes)
        for i, job in enumerate(jobs):
            if job.task_id.int == wanted:
                if i == 0:
                    self.long_at[slot] = math.inf
                del jobs[i]
                return i, job
        return None

    def taken_back(self, jobs: list[Job]) -> None:
        """Jobs an executor handed back unstarted (taken back, or it was draining): they run
        next, elsewhere, or go back to the queue if the worker is stopping."""
        if self.stopping:
            self.giveback.extend(jobs)
        else:
            self.ready.extendleft(reversed(jobs))

    def hand_over(self) -> int:
        """Every ready job goes back to the queue, for a worker that can start it sooner."""
        count = len(self.ready)
        self.giveback.extend(self.ready)
        self.ready.clear()
        return count

    def finish(
        self,
        job: Job,
        status: RunStatus,
        retryable: bool,
        result: str | None,
        error_type: str | None,
        error_message: str | None,
        tb: str | None,
        started: float | None = None,
        finished: float | None = None,
        progress: str | None = None,
    ) -> None:
        """An attempt ended (however): its run row waits for the next write (with the last
        progress it reported, written with its outcome)."""
        self.finished.append(
            FinishedRow(
                job.task_id,
                job.task_name,
                job.attempt,
                status,
                retryable,
                result,
                error_type,
                error_message,
                tb,
                started,
                finished if finished is not None else time.time(),
                progress,
                job.queue,
            )
        )
        if status is _COMPLETED:
            self.stats[_COMPLETED_STR] += 1
        elif status is _INTERRUPTED:
            self.stats[_INTERRUPTED_STR] += 1
        elif status is _CANCELED:  # the caller's decision, not a failure
            self.stats[_CANCELED_STR] += 1
        else:
            self.stats["failed_attempts"] += 1

    # ---------------------------------------------------------------- assigned -> giveback

    def requeue_rest(self, slot: int) -> None:
        """The jobs ``slot``'s executor never started: run them elsewhere (or give back if
        stopping)."""
        jobs = self.assigned[slot]
        if self.stopping:
            self.giveback.extend(jobs)
        else:
            self.ready.extendleft(reversed(jobs))
        jobs.clear()
        self.long_at[slot] = math.inf

    def give_back_rest(self, slot: int) -> None:
        """The jobs ``slot``'s executor never started go back to the queue."""
        self.giveback.extend(self.assigned[slot])
        self.assigned[slot].clear()
        self.long_at[slot] = math.inf

    # ---------------------------------------------------------------- finished -> writing

    def has_unwritten(self) -> bool:
        return bool(self.finished or self.giveback)

    def take_for_write(self) -> WriteBatch:
        """Everything waiting for a write, now carried by a write under way."""
        batch = WriteBatch(self.giveback, self.finished)
        self.giveback, self.finished = [], []
        self.writing.append(batch)
        return batch

    def written(self, batch: WriteBatch) -> None:
        """The write of ``batch`` ended; what it did not write comes back through
        `write_failed`."""
        self.writing.remove(batch)

    def write_failed(self, giveback: list[Job] | None, finished: list[FinishedRow] | None) -> None:
        """What a write could not do waits for the next one, ahead of what came since."""
        if giveback:
            self.giveback = giveback + self.giveback
        if finished:
            self.finished = finished + self.finished

    # ---------------------------------------------------------------- views

    def busy(self) -> bool:
        """Whether an executor has something running."""
        return any(self.assigned)

    def running(self) -> int:
        return sum(1 for jobs in self.assigned if jobs)

    def room(self, now: float, ahead: int = 0) -> int:
        """How many more jobs could start soon: `depth` per executor not busy with a long
        task (plus ``ahead`` while a deep queue is drained fast), less what this worker holds
        beyond those long tasks (<= 0: claim nothing)."""
        long = sum(1 for at in self.long_at if at <= now)
        open_slots = len(self.long_at) - long
        if not open_slots:
            return 0
        return open_slots * self.depth + ahead - (self.in_flight() - long)

    def unstarted(self) -> int:
        """Claimed jobs not running yet: ready, and queued behind an executor's head."""
        return len(self.ready) + sum(max(0, len(jobs) - 1) for jobs in self.assigned)

    def in_flight(self) -> int:
        """Tasks this worker holds as running in the database: claimed and not yet started,
        running, and finished or handed back but not yet written."""
        return (
            len(self.ready)
            + sum(len(jobs) for jobs in self.assigned)
            + len(self.finished)
            + len(self.giveback)
            + sum(len(b.giveback) + len(b.finished) for b in self.writing)
        )

    def known_task_ids(self) -> list[uuid.UUID]:
        """Every task this worker knows it holds (a reconnect hands back the others)."""
        ids = [j.task_id for j in self.ready] + [j.task_id for j in self.giveback]
        ids += [r.task_id for r in self.finished]
        # a write that may still land (or be retried)
        for batch in self.writing:
            ids += [r.task_id for r in batch.finished]
            ids += [j.task_id for j in batch.giveback]
        for jobs in self.assigned:
            ids += [j.task_id for j in jobs]
        return ids
