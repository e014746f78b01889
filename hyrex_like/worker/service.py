"""A worker service off the dispatch loop: a daemon thread and a database connection of its
own (`Maintenance`: heartbeat, rescue, retention; `Scheduler`: periodic tasks).

The base holds what every such service does the same way: start and stop the thread, connect
on first use and after a loss (asking the server to notice a vanished client), and say once
per outage that the database is away and when it is back. A subclass names its thread and its
log events, and writes `_serve` (the loop) and its passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from ..db import WorkerQueries
from .connection import close_quietly, describe
from .processes import set_os_thread_name


class ThreadService:
    """Thread and connection plumbing shared by the worker's background services."""

    thread_name = "hyrex-service"
    """The thread's name (also the OS thread name, as `ps -L` shows it)."""
    event = "service"
    """The prefix of its log events: ``<event>_database_unavailable``, ``..._reconnected``."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], log: Any) -> None:
        self._connect = connect
        self.log = log
        self.db: psycopg.Connection[Any] | None = None
        self._unavailable = False  # logged once per outage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run `_serve` on a daemon thread of its own."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (after the pass under way) and close the connection. A pass stuck
        on a dead link is left behind: the thread is a daemon."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return
        self.close()

    def _run(self) -> None:
        set_os_thread_name(self.thread_name.encode())
        self._serve()

    def _serve(self) -> None:  # pragma: no cover - every service writes its own loop
        raise NotImplementedError

    def _ensure(self) -> psycopg.Connection[Any]:
        """The connection, made anew if there is none (or it closed)."""
        if self.db is None or self.db.closed:
            self.close()
            self.db = self._connect()
            WorkerQueries.watch_client(self.db)
            if self._unavailable:
                self.log.info(f"{self.event}_database_reconnected")
            self._unavailable = False
        return self.db

    def _database_lost(self, exc: BaseException) -> None:
        """A pass met a database error: said once per outage; the connection goes."""
        if not self._unavailable:
            self.log.warning(f"{self.event}_database_unavailable", error=describe(exc))
        self._unavailable = True
        self.close()

    def close(self) -> None:
        """Drop the connection (a subclass lets go of what it holds on it first)."""
        if self.db is not None:
            close_quietly(self.db)
        self.db = None
