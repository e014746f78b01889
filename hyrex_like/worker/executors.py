"""The executor pool, parent side: start executors, hand them ready jobs, take in their results,
and replace the ones that die or run past a task's timeout.

Jobs move through the ledger only: `dispatch` assigns ready jobs to an executor's slot, a result
finishes the slot's head, and an executor lost or killed ends its head (`_fail_head`, the one
failure path) and requeues the rest.

Which executor gets which ready job, and when jobs move away from a long task, is the
`Balancer`'s (`balance.py`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from ..config import WorkerOptions
from ..errors import ExecutorLost, HyrexLikeError, TaskCanceled, TaskTimeout, WorkerError
from ..observer import WorkerObserver
from ..registry import HyrexRegistry
from ..states import RunStatus
from .balance import Balancer
from .ledger import Ledger
from .pipe import ExecutorHandle
from .processes import executor_exited, kill_executor_group
from .protocol import ERR, OK, READY, SKIP, Job
from .running import Running
from .spawn import Spawner

_COMPLETED = RunStatus.COMPLETED
_FAILED = RunStatus.FAILED
_CANCELED = RunStatus.CANCELED


class ExecutorPool:
    """The executor processes of one worker, each with a slot in the ledger."""

    def __init__(
        self,
        registry: HyrexRegistry,
        app: str,
        options: WorkerOptions,
        worker_id: uuid.UUID,
        ledger: Ledger,
        stats: dict[str, int],
        on_error: Callable[[Job, HyrexLikeError], None],
        log: Any,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.stats = stats
        self.on_error = on_error
        self.log = log
        self.observer = observer or WorkerObserver()
        self.executors: list[ExecutorHandle] = []
        self.spawner = Spawner(registry, app, options, worker_id, ledger, self.executors)
        self._startup_failures = 0
        self.balance = Balancer(self.executors, ledger, self.spawner, options, log, observer)
        # Executors that run async tasks side by side (``async_concurrency`` > 1): which jobs
        # of each slot have started, and how their timeouts and cancels end (`running`).
        self.running = Running(self, registry, options) if options.async_concurrency > 1 else None
        if self.running is not None:
            self.balance.pace.lanes = self.running.lanes_of

    # ---------------------------------------------------------------- dispatching

    def dispatch(self) -> None:
        """Hand ready jobs to executors (see `Balancer.dispatch`)."""
        self.balance.dispatch()

    # ---------------------------------------------------------------- results

    def collect(self) -> None:
        for ex in self.executors:
            self._drain_pipe(ex)

    def _drain_pipe(self, ex: ExecutorHandle) -> None:
        try:
            messages = ex.read_messages()
            for msg in messages:
                if isinstance(msg, list):
                    skipped: list[Job] = []
                    on_result = self._on_result if self.running is None else self.running.result
                    for result in msg:
                        on_result(ex, result, skipped)
                    if skipped:
                        self.balance.taken_back(ex, skipped)
                elif msg[0] == READY:
                    ex.ready = True
                    self._startup_failures = 0
            if messages:
                self.ledger.depth = self.balance.pace.depth()
                if self.running is not None:
                    self.running.refresh(ex)
        except (EOFError, OSError):
            pass  # dead: reap deals with it

    def _on_result(self, ex: ExecutorHandle, msg: tuple[Any, ...], skipped: list[Job]) -> None:
        ledger = self.ledger
        held = ledger.assigned[ex.index]
        kind = msg[0]
        if held and held[0].task_id.bytes == msg[1]:
            job = ledger.answered(ex.index)
            ex.batches[0] -= 1
            if not ex.batches[0]:
                ex.batches.popleft()
            if held:
                self.balance.head_started(ex, time.monotonic())
            else:
                ex.head_started = None
        else:
            # A take-back answers at once for the jobs queued behind the one running.
            found = ledger.take_out(ex.index, msg[1]) if kind == SKIP else None
            if found is None:  # pragma: no cover - would be a protocol bug
                raise WorkerError(f"executor answered for {msg[1]!r}, which it does not hold")
            position, job = found
            ex.answered_at(position)
        self.record(job, msg, skipped)

    def record(self, job: Job, msg: tuple[Any, ...], skipped: list[Job]) -> None:
        """What an executor answered for ``job``: its outcome, or handed back unstarted."""
        kind = msg[0]
        ledger = self.ledger
        # (an OK or ERR carries the attempt's last progress as one more field, if it had any)
        if kind == OK:
            self.balance.pace.observe(job.task_name, msg[4] - msg[3])
            progress = msg[6] if len(msg) > 6 else None
            ledger.finish(job, _COMPLETED, True, msg[5], None, None, None, msg[3], msg[4], progress)
        elif kind == ERR:
            started, finished, etype, emsg, tb, retryable = msg[3:9]
            self.balance.pace.observe(job.task_name, finished - started)
            progress = msg[9] if len(msg) > 9 else None
            ledger.finish(
                job, _FAILED, retryable, None, etype, emsg, tb, started, finished, progress
            )
        elif kind == SKIP:
            skipped.append(job)

    # ---------------------------------------------------------------- failures

    def reap(self) -> None:
        """Replace dead executors; their running attempt is lost, the rest go to others."""
        if self.running is not None:
            return self.running.reap()
        for i, ex in enumerate(self.executors):
            if not executor_exited(ex.process):
                continue
            kill_executor_group(ex.process)  # what its tasks left running, before the reap
            self._drain_pipe(ex)  # results it sent before dying still count
            code = ex.process.exitcode
            if not ex.ready:
                self._startup_failures += 1
                if self._startup_failures > 3:
                    raise WorkerError(
                        f"executor processes keep dying at start (exit code {code}); "
                        f"check that {self.app!r} imports cleanly in a fresh interpreter"
                    )
            if self.ledger.assigned[ex.index]:
                why = (
                    f"executor process {ex.process.pid} died (signal {-code})"
                    if code < 0
                    else f"executor process {ex.process.pid} exited with code {code}"
                )
                self._fail_head(ex, RunStatus.LOST, ExecutorLost(why), "task_lost", reason=why)
            ex.close()
            self._replace(i, ex)
            self.log.info("executor_restarted", executor=ex.index, exit_code=code)

    def enforce_timeouts(self) -> None:
        if self.running is not None:
            return self.running.enforce_timeouts()
        now = time.monotonic()
        for i, ex in enumerate(self.executors):
            held = self.ledger.assigned[ex.index]
            if not held or ex.head_started is None:
                continue
            head = held[0]
            if not head.timeout or now - ex.head_started <= head.timeout:
                continue
            self._drain_pipe(ex)  # it may have just finished
            if not held or held[0] is not head:
                continue
            self.spawner.kill(ex)
            why = f"attempt ran past its timeout of {head.timeout:g}s; its executor was killed"
            self._fail_head(
                ex, RunStatus.TIMED_OUT, TaskTimeout(why), "task_timed_out", timeout=head.timeout
            )
            self._replace(i, ex)

    def cancel_head(self, slot: int, job: Job) -> bool:
        """Stop ``job``, running on ``slot``'s executor, because its task was canceled: the
        executor is killed as for a timeout and replaced, the run recorded ``canceled`` (never
        retried), the slot's other jobs run elsewhere. ``on_error`` is not called: a cancel is
        not the task's failure. False if ``job`` is no longer that slot's head (it ended).

        With async tasks side by side: the job's coroutine is cancelled (`Running.cancel`);
        False if it has not started (or has ended)."""
        if self.running is not None:
            return self.running.cancel(slot, job)
        ex = self.executors[slot]
        held = self.ledger.assigned[ex.index]
        self._drain_pipe(ex)  # it may have just finished
        if not held or held[0] is not job:
            return False
        self.spawner.kill(ex)
        why = "the task was canceled while this attempt ran; its executor was killed"
        self._fail_head(
            ex,
            _CANCELED,
            TaskCanceled(why),
            "task_canceled",
            retryable=False,
            stage=RunStatus.RUNNING.value,
        )
        self._replace(slot, ex)
        return True

    def take_back(self, slot: int) -> None:
        """Ask ``slot``'s executor to hand back the jobs it has not started."""
        self.spawner.take_back(self.executors[slot])

    def _fail_head(
        self,
        ex: ExecutorHandle,
        status: RunStatus,
        error: HyrexLikeError,
        event: str,
        retryable: bool = True,
        **fields: Any,
    ) -> None:
        """The one path for an attempt the worker ended (its executor died or was killed):
        record it, say so, call on_error (not for a cancel), and run the slot's other jobs
        elsewhere."""
        head = self.ledger.answered(ex.index)
        canceled = status is _CANCELED
        if not canceled:  # (the ledger counts cancels: they are not failed attempts)
            self.stats[status.value] += 1
        began = self._head_began(ex)
        self.ledger.finish(
            head, status, retryable, None, type(error).__name__, str(error), None, began
        )
        (self.log.info if canceled else self.log.warning)(
            event,
            task_id=str(head.task_id),
            task_name=head.task_name,
            attempt=head.attempt,
            **fields,
        )
        if not canceled:
            self.on_error(head, error)
        self.ledger.requeue_rest(ex.index)

    def _replace(self, i: int, ex: ExecutorHandle) -> None:
        self.stats["executor_restarts"] += 1
        self.executors[i] = self.spawner.spawn(ex.index)
        self.observer.executor_restarted(ex.index, ex.process.exitcode)

    # ---------------------------------------------------------------- stopping

    def interrupt(self, why: str) -> None:
        """Kill executors still busy: their running attempt is requeued as interrupted (not the
        task's fault, so not counted as a failure), the jobs they had not started go back."""
        if self.running is not None:
            return self.running.interrupt(why)
        for ex in self.executors:
            if self.ledger.assigned[ex.index]:
                self.spawner.kill(ex)
                head = self.ledger.answered(ex.index)
                self.ledger.finish(
                    head,
                    RunStatus.INTERRUPTED,
                    True,
                    None,
                    "WorkerShutdown",
                    why,
                    None,
                    self._head_began(ex),
                )
                self.log.warning(
                    "task_interrupted",
                    task_id=str(head.task_id),
                    task_name=head.task_name,
                    attempt=head.attempt,
                    reason=why,
                )
                self.ledger.give_back_rest(ex.index)

    # ---------------------------------------------------------------- starting and stopping

    def start(self) -> None:
        self.spawner.start()

    def drain(self) -> None:
        self.spawner.drain()

    def stop(self) -> None:
        self.spawner.stop()

    def kill_all(self) -> None:
        self.spawner.kill_all()

    # ---------------------------------------------------------------- waiting

    def wait_objects(self) -> list[Any]:
        """What the loop waits on for the executors: each pipe and each process's exit."""
        objects: list[Any] = []
        for ex in self.executors:
            objects.append(ex.conn)
            objects.append(ex.process.sentinel)
        return objects

    def running_heads(self) -> list[tuple[Job, float]]:
        """Each attempt running now, with when its body began (monotonic, as seen here)."""
        if self.running is not None:
            return self.running.heads()
        out = []
        for ex in self.executors:
            held = self.ledger.assigned[ex.index]
            if held and ex.head_started is not None:
                out.append((held[0], ex.head_started))
        return out

    @staticmethod
    def _head_began(ex: ExecutorHandle) -> float | None:
        """When ``ex``'s head began, in epoch seconds (for its run row)."""
        if ex.head_started is None:
            return None
        return time.time() - (time.monotonic() - ex.head_started)

    def timeout_deadlines(self) -> list[float]:
        """When each running attempt with a timeout runs out (monotonic), and when jobs held
        behind long tasks are next taken back or handed over."""
        out = [self.balance.next_at]
        if self.running is not None:
            return out + self.running.deadlines()
        for ex in self.executors:
            held = self.ledger.assigned[ex.index]
            if held and ex.head_started is not None and held[0].timeout:
                out.append(ex.head_started + held[0].timeout)
        return out
