"""The parent's view of executors that run async tasks side by side (``async_concurrency`` K
above 1): several jobs of one slot run at once, so "the head is running" no longer holds.

Each executor says when a job starts (`START`) and answers jobs in any order; the jobs of a
slot still sit in ``ledger.assigned[slot]`` in the order sent, and `Running` keeps which of
them have started, when, and by when they must have answered:

- a timeout is the executor's to enforce (it cancels that coroutine and answers `TIMEOUT`);
  the parent kills the executor only when the job is still unanswered `YIELD_GRACE` seconds
  after its deadline (a coroutine that does not yield). A sync job has no grace: it runs alone
  and is killed at its deadline, as with K = 1;
- a cancel sends `CANCEL` to the executor (that coroutine only; it answers `CANCELED`); one
  still unanswered after `CANCEL_GRACE` seconds gets the executor killed;
- when the parent kills an executor (or it dies), the job that caused it is recorded as it
  would be with K = 1, every other started job as lost (its body began), and the unstarted
  ones run elsewhere.

An executor counts as busy with long work (`Ledger.long_at`) while a sync job runs (from
``busy_after`` after it began), or while all K lanes hold coroutines (from ``busy_after``
after the youngest began).
"""

from __future__ import annotations

import math
import pickle
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config import WorkerOptions
from ..errors import ExecutorLost, HyrexLikeError, TaskCanceled, TaskTimeout, WorkerError
from ..registry import HyrexRegistry
from ..states import RunStatus
from .pipe import ExecutorHandle
from .processes import executor_exited, kill_executor_group
from .protocol import CANCEL, CANCELED, START, TIMEOUT, Job

if TYPE_CHECKING:
    from .executors import ExecutorPool

YIELD_GRACE = 1.0
"""Seconds past an async job's timeout before its executor is killed: the executor cancels
the coroutine at the deadline, so only one that does not yield is still running by then."""

CANCEL_GRACE = 1.0
"""Seconds a cancelled coroutine has to end before its executor is killed."""


class Started(NamedTuple):
    job: Job
    began: float  # monotonic, when the parent read its START
    kill_at: float  # monotonic: still unanswered then, its executor is killed (inf: never)
    is_async: bool


class Running:
    """Started jobs per slot, and the parent's side of their ends."""

    def __init__(self, pool: ExecutorPool, registry: HyrexRegistry, options: WorkerOptions) -> None:
        self.pool = pool
        self.registry = registry
        self.width = options.async_concurrency
        self.started: list[dict[bytes, Started]] = [{} for _ in range(options.processes)]
        self.cancel_by: dict[bytes, float] = {}  # cancels sent: killed if unanswered then

    def lanes_of(self, task_name: str) -> int:
        """How many jobs of ``task_name`` one executor runs at once (for `Pace`)."""
        definition = self.registry.get_task(task_name)
        if definition is None or not definition.is_async:
            return 1
        cap = definition.config.async_concurrency
        return self.width if cap is None else min(cap, self.width)

    # ---------------------------------------------------------------- messages

    def result(self, ex: ExecutorHandle, msg: tuple[Any, ...], skipped: list[Job]) -> None:
        """One message of ``ex``'s: a start, or an answer for any job it holds."""
        pool = self.pool
        kind, key = msg[0], msg[1]
        slot = ex.index
        if kind == START:
            wanted = int.from_bytes(key)
            job = next((j for j in pool.ledger.assigned[slot] if j.task_id.int == wanted), None)
            if job is None:  # pragma: no cover - would be a protocol bug
                raise WorkerError(f"executor started {key!r}, which it does not hold")
            definition = self.registry.get_task(job.task_name)
            is_async = definition is not None and definition.is_async
            now = time.monotonic()
            kill_at = math.inf
            if job.timeout:
                kill_at = now + job.timeout + (YIELD_GRACE if is_async else 0.0)
            self.started[slot][key] = Started(job, now, kill_at, is_async)
            return
        found = pool.ledger.take_out(slot, key)
        if found is None:  # pragma: no cover - would be a protocol bug
            raise WorkerError(f"executor answered for {key!r}, which it does not hold")
        position, job = found
        ex.answered_at(position)
        self.started[slot].pop(key, None)
        self.cancel_by.pop(key, None)
        if kind == TIMEOUT:
            self._record(job, RunStatus.TIMED_OUT, TaskTimeout(msg[5]), msg, "task_timed_out")
        elif kind == CANCELED:
            why = "the task was canceled while this attempt ran; its coroutine was cancelled"
            self._record(job, RunStatus.CANCELED, TaskCanceled(why), msg, "task_canceled")
        else:
            pool.record(job, msg, skipped)

    def _record(
        self,
        job: Job,
        status: RunStatus,
        error: HyrexLikeError,
        msg: tuple[Any, ...],
        event: str,
    ) -> None:
        """An attempt the executor ended itself (its timeout, or a cancel)."""
        pool = self.pool
        canceled = status is RunStatus.CANCELED
        if not canceled:
            pool.stats[status.value] += 1
        progress = msg[5 if canceled else 6] if len(msg) > (5 if canceled else 6) else None
        pool.ledger.finish(
            job,
            status,
            not canceled,
            None,
            type(error).__name__,
            str(error),
            None,
            msg[3],
            msg[4],
            progress,
        )
        fields = {"stage": RunStatus.RUNNING.value} if canceled else {"timeout": job.timeout}
        (pool.log.info if canceled else pool.log.warning)(
            event, task_id=str(job.task_id), task_name=job.task_name, attempt=job.attempt, **fields
        )
        if not canceled:
            pool.on_error(job, error)

    def refresh(self, ex: ExecutorHandle) -> None:
        """After ``ex``'s messages: when it began its work, and from when it counts as long."""
        slot = ex.index
        ledger = self.pool.ledger
        started = self.started[slot]
        if not ledger.assigned[slot]:
            ex.head_started = None
            ledger.long_at[slot] = math.inf
            return
        if not started:  # (sent, not started yet: its start as the dispatch set it)
            ledger.long_at[slot] = math.inf  # nothing runs there: not long
            return
        ex.head_started = min(s.began for s in started.values())
        sync = [s.began for s in started.values() if not s.is_async]
        if sync:
            long_from = sync[0]
        elif len(started) >= self.width:
            long_from = max(s.began for s in started.values())
        else:
            ledger.long_at[slot] = math.inf
            return
        self.pool.balance.long_from(slot, long_from)

    # ---------------------------------------------------------------- cancels and timeouts

    def cancel(self, slot: int, job: Job) -> bool:
        """Cancel ``job``'s coroutine if it has started on ``slot`` (True); False if it has not
        started there or has ended (the caller takes it back, or finds it ended)."""
        ex = self.pool.executors[slot]
        self.pool._drain_pipe(ex)  # it may have just started, or ended
        key = job.task_id.bytes
        if key not in self.started[slot]:
            return False
        if key not in self.cancel_by:
            self.cancel_by[key] = time.monotonic() + CANCEL_GRACE
            try:
                ex.conn.send_bytes(pickle.dumps((CANCEL, key), pickle.HIGHEST_PROTOCOL))
            except OSError:
                pass  # it died: reap records its jobs
        return True

    def deadlines(self) -> list[float]:
        """When a started job, or a cancel, is next overdue (monotonic)."""
        out = [s.kill_at for started in self.started for s in started.values() if s.job.timeout]
        out += self.cancel_by.values()
        return out

    def enforce_timeouts(self) -> None:
        """Kill the executor of a job still unanswered past its deadline (and grace)."""
        now = time.monotonic()
        for i, ex in enumerate(self.pool.executors):
            started = self.started[ex.index]
            for key, s in list(started.items()):
                cancel_at = self.cancel_by.get(key, math.inf)
                if now < s.kill_at and now < cancel_at:
                    continue
                self.pool._drain_pipe(ex)  # it may have just answered
                if key not in started:
                    continue
                if now >= cancel_at:
                    why = (
                        "the task was canceled while this attempt ran and its coroutine did not "
                        "end; its executor was killed"
                    )
                    self._kill(i, ex, s, RunStatus.CANCELED, TaskCanceled(why), "task_canceled")
                else:
                    # (a sync job: killed at its deadline, as with one job at a time)
                    how = (
                        " and the executor's event loop did not respond (blocked by this task "
                        "or by another one running beside it)"
                        if s.is_async
                        else ""
                    )
                    why = (
                        f"attempt ran past its timeout of {s.job.timeout:g}s{how}; its "
                        "executor was killed"
                    )
                    self._kill(i, ex, s, RunStatus.TIMED_OUT, TaskTimeout(why), "task_timed_out")
                break

    def _kill(
        self,
        i: int,
        ex: ExecutorHandle,
        culprit: Started,
        status: RunStatus,
        error: HyrexLikeError,
        event: str,
    ) -> None:
        pool = self.pool
        self._stop_and_drain(ex)
        canceled = status is RunStatus.CANCELED
        fields = (
            {"stage": RunStatus.RUNNING.value} if canceled else {"timeout": culprit.job.timeout}
        )
        if culprit.job.task_id.bytes in self.started[ex.index]:  # (else it answered at the end)
            self._end(ex, culprit, status, error, event, not canceled, fields)
        lost = ExecutorLost(
            f"executor process {ex.process.pid} was killed because task "
            f"{culprit.job.task_name!r} ({culprit.job.task_id}) running beside this attempt "
            f"did not end; this attempt was running"
        )
        for other in list(self.started[ex.index].values()):
            self._end(ex, other, RunStatus.LOST, lost, "task_lost", True, {"reason": str(lost)})
        pool.ledger.requeue_rest(ex.index)
        ex.close()
        self._replace(i, ex)

    def _stop_and_drain(self, ex: ExecutorHandle) -> None:
        """Kill ``ex`` (its process group) and reap it, then read what it sent before it
        died: a result or a start sent while it was being killed still counts."""
        kill_executor_group(ex.process)
        ex.process.join(5)
        self.pool._drain_pipe(ex)

    def _end(
        self,
        ex: ExecutorHandle,
        s: Started,
        status: RunStatus,
        error: HyrexLikeError,
        event: str,
        retryable: bool,
        fields: dict[str, Any],
        error_type: str | None = None,
    ) -> None:
        """A started job the worker ended itself (its executor died or was killed)."""
        pool = self.pool
        key = s.job.task_id.bytes
        self.started[ex.index].pop(key, None)
        self.cancel_by.pop(key, None)
        pool.ledger.take_out(ex.index, key)
        canceled = status is RunStatus.CANCELED
        interrupted = status is RunStatus.INTERRUPTED
        if not canceled and not interrupted:
            pool.stats[status.value] += 1
        began = time.time() - (time.monotonic() - s.began)
        pool.ledger.finish(
            s.job,
            status,
            retryable,
            None,
            error_type or type(error).__name__,
            str(error),
            None,
            began,
        )
        job = s.job
        (pool.log.info if canceled else pool.log.warning)(
            event, task_id=str(job.task_id), task_name=job.task_name, attempt=job.attempt, **fields
        )
        if not canceled and not interrupted:
            pool.on_error(job, error)

    def _replace(self, i: int, ex: ExecutorHandle) -> None:
        self.started[ex.index].clear()
        self.pool.ledger.long_at[ex.index] = math.inf
        self.pool._replace(i, ex)

    # ---------------------------------------------------------------- executors lost, stopping

    def reap(self) -> None:
        """Replace dead executors: each job started there is lost, the rest run elsewhere."""
        pool = self.pool
        for i, ex in enumerate(pool.executors):
            if not executor_exited(ex.process):
                continue
            kill_executor_group(ex.process)
            pool._drain_pipe(ex)  # results it sent before dying still count
            code = ex.process.exitcode
            if not ex.ready:
                pool._startup_failures += 1
                if pool._startup_failures > 3:
                    raise WorkerError(
                        f"executor processes keep dying at start (exit code {code}); "
                        f"check that {pool.app!r} imports cleanly in a fresh interpreter"
                    )
            why = (
                f"executor process {ex.process.pid} died (signal {-code})"
                if code < 0
                else f"executor process {ex.process.pid} exited with code {code}"
            )
            for s in list(self.started[ex.index].values()):
                lost = ExecutorLost(why)
                self._end(ex, s, RunStatus.LOST, lost, "task_lost", True, {"reason": why})
            pool.ledger.requeue_rest(ex.index)
            ex.close()
            self._replace(i, ex)
            pool.log.info("executor_restarted", executor=ex.index, exit_code=code)

    def interrupt(self, why: str) -> None:
        """Kill executors still busy: every job started there is recorded interrupted (and
        retried), the rest go back to the queue."""
        pool = self.pool
        for ex in pool.executors:
            if not pool.ledger.assigned[ex.index]:
                continue
            self._stop_and_drain(ex)
            error = WorkerError(why)
            for s in list(self.started[ex.index].values()):
                self._end(
                    ex,
                    s,
                    RunStatus.INTERRUPTED,
                    error,
                    "task_interrupted",
                    True,
                    {"reason": why},
                    "WorkerShutdown",
                )
            pool.ledger.give_back_rest(ex.index)
            self.started[ex.index].clear()
            ex.close()

    def heads(self) -> list[tuple[Job, float]]:
        """Every started job, with when it began (monotonic)."""
        return [(s.job, s.began) for started in self.started for s in started.values()]
