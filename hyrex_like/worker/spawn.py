"""Starting and stopping executor processes: fork or spawn, the drain and take-back signals,
kill with the process group (never after the reap: see `processes.kill_executor_group`)."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import threading
import time
import uuid
from typing import Any

from ..config import WorkerOptions
from ..registry import HyrexRegistry
from .executor import executor_main
from .ledger import Ledger
from .pipe import ExecutorHandle
from .processes import executor_exited, kill_executor_group
from .protocol import DRAIN_SIGNAL, TAKE_BACK_SIGNAL


class Spawner:
    """Starts, signals and kills the executors of ``executors`` (the pool's list)."""

    def __init__(
        self,
        registry: HyrexRegistry,
        app: str,
        options: WorkerOptions,
        worker_id: uuid.UUID,
        ledger: Ledger,
        executors: list[ExecutorHandle],
    ) -> None:
        self.registry = registry
        self.app = app
        self.options = options
        self.worker_id = worker_id
        self.ledger = ledger
        self.executors = executors
        self._mp = mp.get_context("spawn")

    def start(self) -> None:
        """Start every executor: forked when that is safe, else spawned."""
        fork = self._can_fork()
        for index in range(self.options.processes):
            self.executors.append(self.spawn(index, fork=fork))

    def _can_fork(self) -> bool:
        """Fork the first executors, rather than spawn them, when that is safe.

        A spawned executor is a fresh interpreter that imports the library and the app again
        (~0.25 s); a forked one starts at once. Forking is safe only before the parent holds a
        connection or a second thread, so it is used for the executors started with the
        worker and nowhere else: replacements (after a crash or a timeout) are spawned.
        """
        return (
            "fork" in mp.get_all_start_methods()
            and threading.active_count() == 1
            and self.registry.store.idle()
        )

    def spawn(self, index: int, *, fork: bool = False) -> ExecutorHandle:
        ctx = mp.get_context("fork") if fork else self._mp
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        settings = self.registry.settings.model_copy(
            update={"database_url": self.registry.store.url(), "auto_migrate": False}
        )
        args: tuple[Any, ...] = (
            self.app,
            settings,
            child_conn,
            self.ledger.stopping,
            self.options.log_level,
            self.options.log_format,
            self.worker_id,
            self.options.async_concurrency,
        )
        if fork:
            # A forked child inherits every descriptor: close the parent's ends of the other
            # executors' pipes, so each pipe's far end closes when the parent's does.
            inherited: list[Any] = [*self.executors, parent_conn]
            target: Any = _forked_executor
            args = (inherited, *args)
        else:
            target = executor_main
        process = ctx.Process(
            target=target, args=args, name=f"hyrex-like-executor-{index}", daemon=True
        )
        # Starting a process reaps every dead child multiprocessing knows: the group of an
        # executor that died meanwhile is killed first, while its id is still its own.
        self._kill_exited_groups()
        # The child inherits the blocked signals and unblocks them once its handlers are in
        # place: a signal sent while it starts waits for it instead of killing it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {DRAIN_SIGNAL, TAKE_BACK_SIGNAL})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child_conn.close()
        return ExecutorHandle(index, process, parent_conn)

    def drain(self) -> None:
        """Tell every executor to start nothing new (they hand back what they hold)."""
        for ex in self.executors:
            self.signal_drain(ex)

    @staticmethod
    def signal_drain(ex: ExecutorHandle) -> None:
        _send(ex, DRAIN_SIGNAL)

    @staticmethod
    def take_back(ex: ExecutorHandle) -> None:
        """Ask ``ex`` to hand back at once the jobs it holds and has not started."""
        _send(ex, TAKE_BACK_SIGNAL)

    def stop(self) -> None:
        """Ask every executor to exit, wait up to 5 s, then kill each with its group."""
        for ex in self.executors:
            try:
                ex.conn.send(None)
            except OSError:
                pass
        # Wait for them to exit without reaping them (a join would): the group of an exited
        # executor, with whatever its tasks left running, is killed while its id is its own.
        deadline = time.monotonic() + 5.0
        running = [ex.process.sentinel for ex in self.executors]
        while running and time.monotonic() < deadline:
            for sentinel in mpc.wait(running, max(0.0, deadline - time.monotonic())):
                running.remove(sentinel)
        self.kill_all()

    def kill_all(self) -> None:
        for ex in self.executors:
            self.kill(ex)

    def kill(self, ex: ExecutorHandle) -> None:
        """Kill an executor with its process group (what its tasks started), then reap it.
        Again on one already killed and reaped: nothing is sent (see `kill_executor_group`)."""
        kill_executor_group(ex.process)
        ex.process.join(5)
        ex.close()

    def _kill_exited_groups(self) -> None:
        """Kill the group of every executor that has exited and is not reaped yet (a ``waitid``
        each; only before an executor is started, never per task)."""
        for ex in self.executors:
            if executor_exited(ex.process):
                kill_executor_group(ex.process)


def _send(ex: ExecutorHandle, signum: int) -> None:
    if not executor_exited(ex.process):  # (not reaped here: reap kills its group first)
        try:
            os.kill(ex.process.pid, signum)
        except ProcessLookupError:
            pass  # it died; reap deals with that


def _forked_executor(inherited: list[Any], *args: Any) -> None:
    # Until executor_main ignores them, a signal would run the parent's handler copy.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for item in inherited:  # ExecutorHandle or Connection: the child's copies only
        item.close()
    executor_main(*args)
