"""Wakes idle workers after tasks are committed, from a thread of its own.

A NOTIFY inside the sending transaction takes a database-wide lock at commit and holds it while
the commit record is flushed, so concurrent senders would wait for each other's disk flushes.
Instead, `send` commits the task and then calls `Waker.wake`, which only marks a wake-up as due.
This thread sends one ``pg_notify`` for all the wake-ups marked before it started the statement:
one NOTIFY covers any number of tasks committed before it. A wake-up due after a quiet spell goes
at once; then at most one per ``min_interval`` (the `Settings.wake_interval`), so a process
sending thousands of tasks a second sends a few hundred NOTIFYs, not thousands.

Losing a wake-up loses no task (it is committed; the workers' poll finds it): a NOTIFY that
fails is tried once more on a new connection, then left to the poll.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg

from ..logs import get_logger

log = get_logger("hyrex_like.db.waker")


class Waker:
    """Sends ``notify(conn)`` on its own connection whenever `wake` was called since the last."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        notify: Callable[[psycopg.Connection[Any]], None],
        min_interval: float,
    ) -> None:
        self._connect = connect
        self._notify = notify
        self._min_interval = min_interval
        self._due = False
        self._closing = False
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        _live.add(self)

    def wake(self) -> None:
        """Mark a wake-up as due; call it after the tasks it is for have committed."""
        # Read without the lock: while a wake-up is due, the thread has not yet begun the
        # NOTIFY that will carry it, so that NOTIFY comes after this caller's commit.
        if self._due:
            return
        with self._cond:
            if self._closing:
                return
            self._due = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="hyrex-like-waker", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Send a wake-up still due, then stop the thread (waiting at most ``timeout`` s)."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        next_at = 0.0
        try:
            while True:
                with self._cond:
                    while not self._closing:
                        if self._due:
                            wait = next_at - time.monotonic()
                            if wait <= 0:
                                break
                        else:
                            wait = None
                        self._cond.wait(wait)
                    if not self._due:
                        return
                    self._due = False
                conn = self._send(conn)
                next_at = time.monotonic() + self._min_interval
        finally:
            with self._cond:
                # Also on an unexpected end (which no wake-up may outlive): the next wake()
                # starts a new thread, and a due flag left set would keep it from doing so.
                self._thread = None
                self._due = False
            if conn is not None:
                conn.close()

    def _send(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
        """One NOTIFY; a second try on a new connection (the first may have gone stale)."""
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = self._connect()
                self._notify(conn)
                return conn
            except Exception as exc:  # any failure: the poll finds the tasks anyway
                if conn is not None:
                    conn.close()
                    conn = None
                if attempt == 2:
                    log.warning(
                        "wake_up_not_sent",
                        error=f"{type(exc).__name__}: {exc}",
                        note="idle workers find the new tasks at their next poll",
                    )
        return None

    def _after_fork(self) -> None:
        # In a forked child the thread is gone, and its lock may have been held at the fork.
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._due = False


_live: weakref.WeakSet[Waker] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for waker in list(_live):
        waker._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _send_due_wake_ups() -> None:
    # A script that sends a task and exits: the thread is a daemon, so without this its
    # wake-up could die with it and the task would wait for a worker's poll.
    for waker in list(_live):
        waker.close(timeout=2.0)
