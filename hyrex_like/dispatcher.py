"""The worker: one parent process that claims tasks and N executor processes that run them.

`Dispatcher` wires the services of `hyrex_like.worker` and runs the loop. Its steps are named
calls (claim and write, cancel, dispatch, wait, collect, reap, enforce timeouts, poll); each does
what it can without blocking on the others, so a slow task, a dead executor or a dead database
never stops the loop. Every attempt the worker holds is in one `Ledger`; the services meet
there and in the `Connections`, and never import each other.

Round trips per batch: one statement claims (and opens the run rows), one writes every finished
attempt. Results wait in memory while the database is away and are written when it is back.
"""

from __future__ import annotations

import math
import multiprocessing.connection as mpc
import time
import uuid
from collections.abc import Callable
from typing import Any

from .config import MAX_PROCESSES, WorkerOptions, default_processes, redact_dsn
from .errors import ConfigurationError, WorkerError
from .logs import get_logger
from .observer import GuardedObserver, WorkerObserver, timed, times_steps
from .registry import HyrexRegistry
from .states import RunStatus
from .worker.cancels import Cancels
from .worker.claimer import Claimer
from .worker.completer import Completer
from .worker.connection import Connections
from .worker.executors import ExecutorPool
from .worker.handlers import OnErrorCalls
from .worker.ledger import Ledger
from .worker.maintenance import Maintenance
from .worker.progress import ProgressWriter
from .worker.retention import Retention
from .worker.scheduler import Scheduler
from .worker.signals import ForcedExit, Signals

__all__ = ["MAX_PROCESSES", "Dispatcher", "WorkerOptions", "default_processes"]

log = get_logger("hyrex_like.worker")


def new_stats() -> dict[str, int]:
    """The counters a worker logs when it stops (`worker_stopped`)."""
    return {
        "claimed": 0,
        RunStatus.COMPLETED.value: 0,
        "failed_attempts": 0,
        RunStatus.INTERRUPTED.value: 0,  # by the shutdown: requeued, not the task's fault
        "given_back": 0,  # claimed, never started: handed back (shutdown or hand-over)
        RunStatus.TIMED_OUT.value: 0,
        RunStatus.LOST.value: 0,
        RunStatus.CANCELED.value: 0,  # attempts this worker stopped or never began: canceled
        "rescued": 0,
        "executor_restarts": 0,
        "db_reconnects": 0,
    }


class Dispatcher:
    """Runs the tasks of ``registry`` (importable as ``app``) until told to stop."""

    def __init__(
        self,
        registry: HyrexRegistry,
        app: str,
        options: WorkerOptions | None = None,
        *,
        observer: WorkerObserver | None = None,
    ):
        self.registry = registry
        self.app = app
        self.options = options = options or WorkerOptions()
        self.worker_id = uuid.uuid4()
        self.log = log.bind(worker_id=str(self.worker_id))
        self.observer = GuardedObserver(observer, self.log) if observer else WorkerObserver()
        self._timed = times_steps(observer)
        self.task_names = sorted(registry.tasks)
        self.stats = new_stats()
        self.signals = Signals()
        self.ledger = Ledger(options.processes, self.stats)
        self.conns = Connections(
            registry,
            options,
            self.worker_id,
            self.task_names,
            self.ledger,
            self.stats,
            self.signals.wake,
            self.log,
        )
        self.conns.before_close = lambda: self._settle(0.0)
        self.on_error = OnErrorCalls(registry, self.log)
        self.pool = ExecutorPool(
            registry,
            app,
            options,
            self.worker_id,
            self.ledger,
            self.stats,
            self.on_error.call,
            self.log,
            self.observer,
        )
        self.claimer = Claimer(
            self.ledger,
            self.conns,
            options,
            self.worker_id,
            self.task_names,
            self.stats,
            self.log,
            self.observer,
        )
        self.completer = Completer(
            self.ledger,
            self.conns,
            self.worker_id,
            self.stats,
            self.log,
            options.log_level == "debug",
            self.claimer.settle,
            self.pool.running_heads,
            self.observer,
        )
        self.maintenance = Maintenance(
            lambda: registry.store.connect(worker=True),
            self.conns.register,
            options,
            self.worker_id,
            self.log,
            on_rescued=self._rescued,
            on_cancel=self._cancel_requested,
            observer=self.observer,
            retention=None if options.retention is None else Retention(options.retention, self.log),
        )
        scheduled = registry.scheduled() if options.scheduler else {}
        # Fires every schedule the app registers, whatever queues this worker serves.
        self.scheduler = (
            Scheduler(
                lambda: registry.store.connect(worker=True),
                scheduled,
                self.log,
                observer=self.observer,
            )
            if scheduled
            else None
        )
        # what tasks report with update_progress, written on a thread of its own
        self.progress = ProgressWriter(
            lambda: registry.store.connect(worker=True), self.pool.executors, self.log
        )
        self.cancels = Cancels(
            self.ledger,
            self.pool.cancel_head,
            self.pool.take_back,
            self.stats,
            self.log,
            behind_heads_run=self.pool.running is not None,
        )
        self.conns.on_cancel = self.cancels.request  # (on the loop's thread: no wake needed)
        self.conns.on_pause = self._queue_paused
        self.conns.on_limited = self._limited_slot_freed
        self.completer.limited_ids = self.claimer.limited_ids  # one set: see Claimer
        self._grace_deadline = math.inf
        # The loop's steps, in order (named for the observer's `step` hook).
        self._steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("sync", self._sync),  # take in ended rounds, start the next write and claim
            ("cancel", self.cancels.step),  # before dispatch: a canceled ready job never starts
            ("dispatch", self.pool.dispatch),
            ("wait", self._wait),  # pipes, sentinels, LISTEN, the wake pipe
            ("collect", self.pool.collect),
            ("reap", self.pool.reap),
            ("enforce_timeouts", self.pool.enforce_timeouts),
            ("poll", lambda: self.claimer.poll(time.monotonic())),
        )

    # ---------------------------------------------------------------------------- lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`). Returns the process exit code."""
        if not self.task_names:
            raise WorkerError(f"{self.app!r} has no registered tasks; nothing to run")
        self.signals.install()
        try:
            try:
                try:
                    self._start()
                except BaseException:
                    self.pool.kill_all()
                    raise
                while not self._finished():
                    self._step()
                return self._shutdown()
            except ForcedExit:
                return self._forced_shutdown()
            except ConfigurationError:
                self._abandon()
                raise
        finally:
            self.signals.restore()
            self.signals.close()
            self.observer.detached()  # (a metrics server it started stops with the worker)

    def request_stop(self) -> None:
        """Begin a graceful stop, as SIGTERM does (safe from another thread)."""
        self.signals.request_stop()

    def _start(self) -> None:
        store = self.registry.store
        deadline = time.monotonic() + self.options.startup_timeout
        # Executors first: they start while the parent checks the schema and connects.
        self.pool.start()
        self.observer.attached(self.worker_id, self.ledger)
        self.conns.ensure_schema(deadline)
        self.conns.connect_at_start(deadline)
        self.maintenance.start()
        self.progress.start()
        if self.scheduler is not None:
            self.scheduler.start()
        self.log.info(
            "worker_started",
            app=self.app,
            queues=list(self.options.queues) or "*",
            tasks=self.task_names,
            processes=self.options.processes,
            prefetch=self.options.prefetch or "auto",
            busy_after=self.options.busy_after,
            database=redact_dsn(store.url()),
            schema=store.schema,
            schedules=sorted(self.scheduler.definitions) if self.scheduler else [],
        )

    def _step(self) -> None:
        if self.signals.stop_requested and not self.ledger.stopping:
            self._begin_stop()
        if self._timed:
            timed(self.observer, *self._steps)
            return
        for _, step in self._steps:
            step()

    def _rescued(self, tasks: int) -> None:
        """From the upkeep thread: tasks of dead workers are queued again; claim them."""
        self.stats["rescued"] += tasks
        self.ledger.claim_wanted = True
        self.signals.wake()

    def _cancel_requested(self, task_ids: list[uuid.UUID]) -> None:
        """From the upkeep thread: the heartbeat found cancels of tasks this worker runs."""
        self.cancels.request(task_ids)
        self.signals.wake()

    def _limited_slot_freed(self) -> None:
        self.claimer.limited_wanted = True

    def _queue_paused(self, queue: str) -> None:
        """On the loop's thread: ``queue`` was paused. What this worker claimed of it and has
        not handed to an executor goes back unstarted (what an executor holds still runs:
        at most --prefetch per executor)."""
        self.claimer.queue_paused(queue)
        ready = self.ledger.ready
        back = [job for job in ready if job.queue == queue]
        if back:
            kept = [job for job in ready if job.queue != queue]
            ready.clear()
            ready.extend(kept)
            self.ledger.giveback.extend(back)
            self.log.info("queue_paused", queue=queue, given_back=len(back))

    def _finished(self) -> bool:
        if not self.ledger.stopping:
            return False
        busy = self.ledger.busy() or self.claimer.round is not None
        return not busy or time.monotonic() >= self._grace_deadline

    def _begin_stop(self) -> None:
        self.pool.drain()  # executors hand back what they have not started
        self.ledger.begin_stop()
        self._grace_deadline = time.monotonic() + self.options.grace_period
        running = self.ledger.running()
        self.log.info("worker_stopping", running=running, grace_period=self.options.grace_period)

    def _shutdown(self) -> int:
        """After the grace period: requeue what still runs, write everything, stop executors."""
        self.pool.interrupt("the worker shut down before this attempt finished")
        self.pool.stop()
        self._stop_scheduler()
        self.progress.stop()  # (its last pass writes the last values reported)
        self.maintenance.stop()  # before the final write marks the worker stopped
        deadline = time.monotonic() + max(10.0, self.options.grace_period)
        written = self._final_flush(deadline)
        # on_error calls still running get what is left of the grace period
        self.on_error.drain(self._grace_deadline)
        self.log.info("worker_stopped", clean=written, **self.stats)
        return 0

    def _forced_shutdown(self) -> int:
        self.signals.default_handlers()
        self.log.warning("worker_forced_stop")
        self.pool.interrupt("the worker was stopped at once (second signal)")
        self.pool.kill_all()
        self._stop_scheduler(timeout=0.5)
        self.progress.stop(timeout=0.5)
        self.maintenance.stop(timeout=0.5)
        self.ledger.begin_stop()
        # One quick try; whatever is not written is requeued by other workers once our
        # heartbeat is stale.
        try:
            self._final_flush(deadline=time.monotonic() + 1.0)
        except Exception:  # pragma: no cover - best effort on the way out
            pass
        self.on_error.drain(time.monotonic())
        self.log.info("worker_stopped", clean=False, **self.stats)
        return 1

    def _stop_scheduler(self, timeout: float = 5.0) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(timeout)

    def _final_flush(self, deadline: float) -> bool:
        return self.completer.final_flush(deadline, lambda: self.claimer.round is None)

    def _abandon(self) -> None:
        """Stop without the database, which refuses us for good (`outages.refusal`): the tasks
        this worker holds stay marked as running until another worker's rescuer requeues them
        (its heartbeat is stale after --stale-after seconds).

        Results already in hand are written first if a connection still works; those that
        cannot be are logged apart, by task id: these tasks finished, and will run again."""
        self._stop_scheduler(timeout=0.5)
        self.progress.stop(timeout=0.5)
        self.maintenance.stop(timeout=0.5)
        if self.conns.started:
            self.pool.collect()  # results the executors sent before they are killed
        self.pool.kill_all()
        if self.conns.started:
            self._settle(1.0)  # take in the rounds in flight, then write, without reconnecting
            self.completer.write_what_is_left()
        self.completer.report_abandoned()

    # ---------------------------------------------------------------------------- steps

    def _sync(self) -> None:
        """Take in the database rounds that ended; start the next write (what finished, what
        goes back unstarted) and the next claim, each on its own thread and connection."""
        self._settle(0.0)
        now = time.monotonic()
        if now >= self.completer.retry_at:  # a retry written earlier is due now
            self.ledger.claim_wanted = True
            self.completer.retry_at = math.inf
        self.completer.start()
        self.claimer.start()

    def _settle(self, timeout: float, write: bool = True, claim: bool = True) -> bool:
        """Take in the rounds in flight (the write, the claim or both) that have ended, waiting
        up to ``timeout`` seconds for them. False if one is still running."""
        deadline = time.monotonic() + timeout
        written = not write or self.completer.settle(deadline)
        claimed = not claim or self.claimer.settle(deadline)
        return written and claimed

    def _wait(self) -> None:
        objects: list[Any] = [self.signals.wake_r, *self.pool.wait_objects()]
        listen = self.conns.listen_fileno()
        if listen is not None:
            objects.append(listen)
        ready = mpc.wait(objects, self._wait_timeout())
        if self.signals.wake_r in ready:
            self.signals.clear_wakes()
        self.conns.take_notifies(ready)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        if self.signals.stop_requested and not self.ledger.stopping:
            return 0.0
        writing = self.completer.round is not None
        deadlines = [self.completer.retry_at]
        if self.ledger.stopping:
            deadlines.append(self._grace_deadline)
        else:  # the next poll, or the next waiting task's due time, if sooner
            deadlines += (self.claimer.next_poll, self.claimer.next_due)
        # (a round in flight wakes the loop when it ends)
        if (not writing and self.ledger.has_unwritten()) or (
            self.claimer.round is None and self.claimer.size()
        ):
            deadlines.append(now if self.conns.db is not None else self.conns.next_attempt)
        deadlines += self.pool.timeout_deadlines()
        deadlines.append(self.completer.next_mark())
        deadlines.append(self.cancels.next_check)
        return max(0.0, min(min(deadlines) - now, 1.0))
