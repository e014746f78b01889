"""The completer: writes what ended (one guarded statement per batch) and hands back what never
started, on the writer's thread and connection, and logs each outcome once it is written.

Results wait in the ledger while the database is away and are written when it is back; the
write is guarded (task still ours, same attempt), so writing twice is harmless. A round also
records when bodies still running began (`marks`), so a rescuer can tell an attempt a
dead worker had started (lost) from a claim it never began (undone).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..db import FinishedRow, WorkerQueries
from ..observer import WorkerObserver
from ..states import RunStatus, TaskStatus
from .connection import DB_ERRORS, Connections, describe, wait_for
from .ledger import Ledger, WriteBatch
from .marks import Mark, StartMarks
from .protocol import Job
from .tally import forget, tally_for

_COMPLETED = RunStatus.COMPLETED
_INTERRUPTED = RunStatus.INTERRUPTED
_QUEUED_STR = TaskStatus.QUEUED.value
_FAILED_STR = TaskStatus.FAILED.value
_CANCELED_STR = TaskStatus.CANCELED.value
_PAUSED_STR = TaskStatus.PAUSED.value
_CANCELED = RunStatus.CANCELED

Returned = list[tuple[uuid.UUID, str, datetime, int]]


@dataclass
class _Round:
    """One write: its batch, and what came of it."""

    db: psycopg.Connection[Any]
    batch: WriteBatch
    generation: int
    gave_back: bool = False
    returned: Returned | None = None  # None: not written
    rewritten: dict[uuid.UUID, FinishedRow] = field(default_factory=dict)  # rejected, as failed
    marks: list[Mark] = field(default_factory=list)  # starts of bodies still running
    marked: bool = False
    seconds: float = 0.0  # the finish statement's time
    error: BaseException | None = None
    future: Future[_Round] | None = None  # set while it runs on the writer's thread


class Completer:
    """Writes the ledger's finished and given-back attempts."""

    def __init__(
        self,
        ledger: Ledger,
        conns: Connections,
        worker_id: uuid.UUID,
        stats: dict[str, int],
        log: Any,
        per_task: bool,
        settle_claim: Callable[[float], bool],
        running_heads: Callable[[], list[tuple[Job, float]]] = list,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.ledger = ledger
        self.conns = conns
        self.worker_id = worker_id
        self.stats = stats
        self.log = log
        self._per_task = per_task  # a line per completed task (debug: it costs ~40 us each)
        self.observer = observer or WorkerObserver()
        self.tally = tally_for(worker_id)  # ended attempts per minute, for queue_minute
        self._settle_claim = settle_claim  # a claim's rows go back before the last write
        self.marks = StartMarks(running_heads)
        self.round: _Round | None = None
        self.retry_at = math.inf  # when the next retry written so far becomes due
        # Tasks this worker claimed from limited queues (the claimer's set): a write that ends
        # one, or hands it back, frees a slot of its queue, so it wakes every worker.
        self.limited_ids: set[uuid.UUID] = set()
        self.channel = conns.registry.store.channel

    def start(self) -> None:
        """Start a write on the writer's thread, if none is in flight and one is needed."""
        if self.round is not None:
            return
        marks = self.marks.due()
        if not marks and not self.ledger.has_unwritten():
            return
        db = self.conns.ensure()
        if db is not None:
            job = _Round(db, self.ledger.take_for_write(), self.conns.generation, marks=marks)
            job.future = self.conns.run(self.conns.writer, db, self._run, job)
            self.round = job

    def next_mark(self) -> float:
        """When a running head becomes due for its start mark (monotonic; inf: none, or a
        round is in flight, whose end wakes the loop anyway)."""
        if self.round is not None:
            return math.inf
        due = self.marks.next_due()
        if due < math.inf and self.conns.db is None:
            due = max(due, self.conns.next_attempt)  # no spinning while the database is away
        return due

    def write_now(self, db: psycopg.Connection[Any]) -> None:
        """Write on this thread (on the way out)."""
        self._apply(self._run(_Round(db, self.ledger.take_for_write(), self.conns.generation)))

    def settle(self, deadline: float) -> bool:
        """Take in the write in flight if it has ended, waiting until ``deadline`` at most.
        False if it is still running."""
        job = self.round
        if job is None:
            return True
        if not wait_for(job.future, deadline):
            return False
        self.round = None
        self._apply(job)
        return True

    def _run(self, job: _Round) -> _Round:
        """The statements of one write, in order, each recorded as done only once it succeeded
        (what did not is retried by a later write)."""
        try:
            if job.batch.giveback:
                items = [(j.task_id, j.attempt) for j in job.batch.giveback]
                WorkerQueries.give_back(job.db, self.worker_id, items)
                job.gave_back = True
            if job.batch.finished:
                began = time.perf_counter()
                job.returned = self._write_finished(job.db, job.batch.finished, job.rewritten)
                job.seconds = time.perf_counter() - began
            if job.marks:
                WorkerQueries.mark_started(job.db, self.worker_id, job.marks)
                job.marked = True
            if self.limited_ids and self._frees_limited(job):
                WorkerQueries.notify_limited(job.db, self.channel)
        except DB_ERRORS as exc:
            job.error = exc
        return job

    def _frees_limited(self, job: _Round) -> bool:
        """Whether this write ended (or handed back) a task of a limited queue. On the writer's
        thread: reads the set only by membership, as the loop's thread changes it."""
        limited = self.limited_ids
        ended = [r.task_id for r in job.batch.finished] if job.returned is not None else []
        if job.gave_back:
            ended += [j.task_id for j in job.batch.giveback]
        return any(task_id in limited for task_id in ended)

    def _write_finished(
        self,
        db: psycopg.Connection[Any],
        rows: list[FinishedRow],
        rewritten: dict[uuid.UUID, FinishedRow],
    ) -> Returned:
        """Write ``rows``; one the database refuses is written again as failed, and put in
        ``rewritten`` (what it ends as is what gets counted)."""
        try:
            return WorkerQueries.finish(db, self.worker_id, rows)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection, not the rows: keep them all for the next try
        except psycopg.Error as exc:
            # One row the database refuses must not block the others: isolate it.
            if len(rows) == 1:
                row = rows[0]
                self.log.error(
                    "task_result_rejected", task_id=str(row.task_id), error=describe(exc)
                )
                fixed = FinishedRow(
                    row.task_id,
                    row.task_name,
                    row.attempt,
                    RunStatus.FAILED,
                    False,
                    None,
                    "ResultRejected",
                    f"the database rejected this attempt's outcome: {describe(exc)}",
                    row.traceback,
                    row.started_at,
                    row.finished_at,
                    queue=row.queue,
                )
                returned = WorkerQueries.finish(db, self.worker_id, [fixed])
                rewritten[row.task_id] = fixed
                return returned
            out: Returned = []
            for row in rows:
                out += self._write_finished(db, [row], rewritten)
            return out

    def _apply(self, job: _Round) -> None:
        batch = job.batch
        self.ledger.written(batch)
        if self.limited_ids:
            if job.returned is not None:
                self.limited_ids.difference_update(r.task_id for r in batch.finished)
            if job.gave_back:
                self.limited_ids.difference_update(j.task_id for j in batch.giveback)
        if job.marked:  # (marks not written are due again at the next round)
            self.marks.written(job.marks)
        if batch.giveback and not job.gave_back:
            self.ledger.write_failed(batch.giveback, None)
        elif batch.giveback:
            self.observer.given_back(len(batch.giveback))
            self.stats["given_back"] += len(batch.giveback)
            self.log.info(
                "tasks_given_back",
                count=len(batch.giveback),
                task_ids=[str(j.task_id) for j in batch.giveback],
                reason="claimed but not started before the shutdown; queued again as they were"
                if self.ledger.stopping
                else "handed over (no executor of this worker could start them soon) or their "
                "queue was paused; queued again as they were",
            )
        if job.returned is None:
            self.ledger.write_failed(None, batch.finished)
        elif batch.finished:
            self.observer.written(len(batch.finished), job.seconds)
            counted = accepted(batch.finished, job.returned, job.rewritten)
            self.observer.attempts(counted)
            self.tally.add(counted)
            due = log_outcomes(self.log, batch.finished, job.returned, self._per_task)
            self.retry_at = min(self.retry_at, due)
        # A write that failed on connections replaced since must not reset the new ones (its
        # rows are back in the ledger).
        if job.error is not None and job.generation == self.conns.generation:
            self.conns.lost(job.error)

    # ---------------------------------------------------------------- on the way out

    def flush(self, timeout: float) -> None:
        """Write what finished and hand back what never started, now."""
        self._settle_claim(time.monotonic())  # a claim's rows go back (see Ledger.claimed)
        if not self.settle(time.monotonic() + timeout):
            return
        if not self.ledger.has_unwritten():
            return
        db = self.conns.ensure()
        if db is None:
            return
        self.write_now(db)

    def final_flush(self, deadline: float, claim_idle: Callable[[], bool]) -> bool:
        """Write everything before ``deadline``, then sign the worker off and close. Past the
        deadline the tallies are still written (what did get written was counted) and dropped."""
        try:
            while True:
                self.flush(timeout=max(0.0, deadline - time.monotonic()))
                idle = self.round is None and claim_idle()
                if not self.ledger.has_unwritten() and idle:
                    break
                if time.monotonic() >= deadline:
                    self.log.error(
                        "worker_unwritten_results",
                        results=len(self.ledger.finished),
                        unstarted=len(self.ledger.giveback),
                        hint="other workers requeue these tasks once this worker's heartbeat "
                        "is stale",
                    )
                    return False
                time.sleep(0.05)
            db = self.conns.ensure()
            if db is not None:
                try:  # first: a worker that could not sign off is declared lost later
                    WorkerQueries.stop(db, self.worker_id)
                except DB_ERRORS:
                    pass
            self._last_tallies()
            self.conns.close()
            return True
        finally:
            self._last_tallies()  # (past the deadline: on the open connection, if any)

    def _last_tallies(self) -> None:
        """Add the counts since the last heartbeat to queue_minute on the writer's open
        connection (never reconnecting: the database may be why the deadline passed), and
        drop this worker's tally. Counts that cannot be written are lost, as with SIGKILL."""
        db = self.conns.db
        try:  # (not while a write in flight holds it: that could wait on a lock for ever)
            if self.round is None and db is not None and not db.closed and not db.broken:
                self.tally.flush(db, self.worker_id)
        except (*DB_ERRORS, psycopg.Error):
            pass
        finally:
            forget(self.worker_id)

    def write_what_is_left(self) -> None:
        """On the way out without reconnecting: results and unstarted tasks go through the
        writer's connection, if it is still open."""
        db = self.conns.db
        if db is None or db.closed or not self.ledger.has_unwritten():
            return
        self.write_now(db)

    def report_abandoned(self) -> None:
        """Log, by task id, what a worker stopping without the database leaves behind: results
        it could not write, and the tasks it holds (still marked as running)."""
        unwritten = [r.task_id for r in self.ledger.finished]
        if self.round is not None:  # a write still in flight may yet land
            unwritten += [r.task_id for r in self.round.batch.finished]
        if unwritten:
            self.log.error(
                "worker_results_lost",
                tasks=len(unwritten),
                task_ids=[str(i) for i in unwritten],
                hint="these tasks finished but their outcome could not be written; other "
                "workers run them again once this worker's heartbeat is stale",
            )
        lost = set(unwritten)
        held = [i for i in self.ledger.known_task_ids() if i not in lost]
        if held:
            self.log.error(
                "worker_abandoned_tasks",
                tasks=len(held),
                task_ids=[str(i) for i in held],
                hint="other workers requeue these tasks once this worker's heartbeat is stale",
            )


_PASSED = object()  # (a row finish_runs does not return: it passed the guard if it completed)


def accepted(
    rows: Sequence[FinishedRow], returned: Returned, rewritten: dict[uuid.UUID, FinishedRow]
) -> list[FinishedRow]:
    """The attempts of a written batch the database recorded, each with the run status it
    recorded, for the metrics and the minute tally (counted once across the cluster).

    ``finish_runs`` returns the rows that passed its guard but completed ones, so a row not
    returned passed if it completed and was refused otherwise (a late write for a task rescued
    since). A late *completed* write it refused cannot be told apart and is counted (rare;
    README, Metrics). A row returned with no task status is taken as refused. A run
    stopped as canceled with no cancel on the task (its workflow's pause) is recorded as
    interrupted, as the statement does; a row rejected and rewritten counts as written."""
    statuses: dict[uuid.UUID, str | None] = {r[0]: r[1] for r in returned}
    out: list[FinishedRow] = []
    for row in rows:
        row = rewritten.get(row.task_id, row)
        status: object = statuses.get(row.task_id, _PASSED)
        if status is _PASSED:
            if row.status is _COMPLETED:
                out.append(row)
        elif status is None:
            continue
        elif row.status is _CANCELED and status != _CANCELED_STR:
            out.append(row._replace(status=_INTERRUPTED))
        else:
            out.append(row)
    return out


def log_outcomes(
    log: Any, rows: Sequence[FinishedRow], returned: Returned, per_task: bool
) -> float:
    """Log what a write decided for each attempt (retry, failure; each success if
    ``per_task``); returns when the earliest retry it scheduled is due (monotonic)."""
    retry_at = math.inf
    now_wall = datetime.now(UTC)
    by_id = {r.task_id: r for r in rows}
    for task_id, status, run_after, attempts in returned:
        row = by_id.get(task_id)
        if status == _QUEUED_STR:
            delay = (run_after - now_wall).total_seconds()
            retry_at = min(retry_at, time.monotonic() + max(0.0, delay))
            if row is not None and row.status is _INTERRUPTED:
                log.info(
                    "task_requeued",
                    task_id=str(task_id),
                    task_name=row.task_name,
                    attempt=row.attempt,
                    reason="interrupted by the shutdown; this attempt does not count",
                )
            elif row is not None:
                log.warning(
                    "task_retry_scheduled",
                    task_id=str(task_id),
                    task_name=row.task_name,
                    attempt=attempts,
                    error_type=row.error_type,
                    error=row.error_message,
                    delay=round(max(0.0, delay), 3),
                )
        elif status == _CANCELED_STR:
            # A run this worker ended as canceled was logged then (task_canceled); one that
            # ended otherwise (it failed, timed out or was interrupted) after its cancel was
            # requested ends the task canceled too, not retried: say so.
            if row is not None and row.status is not _CANCELED:
                log.info(
                    "task_canceled",
                    task_id=str(task_id),
                    task_name=row.task_name,
                    attempt=attempts,
                    run_status=row.status.value,
                    reason="its cancel was requested while this attempt ran; not retried",
                )
        elif status == _PAUSED_STR:
            log.info(
                "task_paused",
                task_id=str(task_id),
                task_name=row.task_name if row else None,
                attempt=attempts,
                reason="its workflow was paused; held until the workflow is resumed",
            )
        elif status == _FAILED_STR:
            log.error(
                "task_failed",
                task_id=str(task_id),
                attempt=attempts,
                task_name=row.task_name if row else None,
                error_type=row.error_type if row else None,
                error=row.error_message if row else None,
            )
    if per_task:
        for row in rows:
            if row.status is _COMPLETED:
                log.debug(
                    "task_completed",
                    task_id=str(row.task_id),
                    task_name=row.task_name,
                    attempt=row.attempt,
                )
    return retry_at
