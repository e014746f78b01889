"""The worker's database connections: connecting (and reconnecting), registering, losing them.

Three connections: writes (and upkeep), claims, LISTEN. Writes and claims each run on a thread
of their own (`_DbThread`), so the loop never waits on a round trip and a claim never waits
behind a write. A connection a round still uses is closed by that round's thread.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import psycopg
import tenacity

from ..config import WorkerOptions, redact_dsn
from ..db import WorkerQueries
from ..errors import ConfigurationError, DatabaseError, SchemaNotReady
from ..outages import URL_HINT, refusal
from ..registry import HyrexRegistry
from .ledger import Ledger
from .processes import set_os_thread_name

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseError)


class _DbThread:
    """A daemon thread that runs one call at a time for the loop and wakes it when done.

    Daemon, not a pool: a round blocked on a vanished server must not hold up the exit.
    """

    def __init__(self, wake: Callable[[], None], name: str) -> None:
        self._wake = wake
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._calls = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        future: Future[Any] = Future()
        self._calls.put((future, fn, args))
        return future

    def _serve(self) -> None:
        set_os_thread_name(self._name.encode())
        while True:
            future, fn, args = self._calls.get()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the loop, which decides
                future.set_exception(exc)
            self._wake()


class Connections:
    """Opens, replaces and closes the worker's three connections, and runs rounds on them."""

    def __init__(
        self,
        registry: HyrexRegistry,
        options: WorkerOptions,
        worker_id: uuid.UUID,
        task_names: Sequence[str],
        ledger: Ledger,
        stats: dict[str, int],
        wake: Callable[[], None],
        log: Any,
    ) -> None:
        self.registry = registry
        self.options = options
        self.worker_id = worker_id
        self.task_names = task_names
        self.ledger = ledger
        self.stats = stats
        self.log = log
        self.db: psycopg.Connection[Any] | None = None
        self.claim_db: psycopg.Connection[Any] | None = None
        self.listen: psycopg.Connection[Any] | None = None
        self.writer = _DbThread(wake, "hyrex-writer")
        self.claimer = _DbThread(wake, "hyrex-claimer")
        self._in_use: dict[_DbThread, tuple[psycopg.Connection[Any], Future[Any]]] = {}
        self.generation = 0  # bumped by every (re)connect; rounds carry the one they ran on
        self._failures = 0
        self._lost = False
        self.next_attempt = 0.0
        self.started = False  # connected once: a refusal from now on is waited out a while
        self._refused_since: float | None = None  # when reconnects began to be refused
        # Called before closing: takes in the rounds that ended (set by the Dispatcher).
        self.before_close: Callable[[], object] = lambda: None
        # Called with the task ids a control-channel NOTIFY asks this worker to cancel.
        self.on_cancel: Callable[[list[uuid.UUID]], object] = lambda task_ids: None
        # Called with the name of a queue a control-channel NOTIFY says was paused.
        self.on_pause: Callable[[str], object] = lambda queue: None
        # Called when a NOTIFY says a slot of a limited queue was freed.
        self.on_limited: Callable[[], object] = lambda: None
        self._control = registry.store.control_channel
        self._me = str(worker_id)

    def run(
        self, thread: _DbThread, db: psycopg.Connection[Any], fn: Callable[..., Any], *args: Any
    ) -> Future[Any]:
        """Run ``fn(*args)`` on ``thread``, which uses ``db`` until it returns."""
        future = thread.submit(fn, *args)
        self._in_use[thread] = (db, future)
        return future

    def connect(self) -> psycopg.Connection[Any] | None:
        """(Re)connect the three connections, with tenacity retrying inside a short window."""
        if time.monotonic() < self.next_attempt:
            return None
        store = self.registry.store
        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_delay(1.0),
                wait=tenacity.wait_exponential(multiplier=0.05, max=0.5)
                + tenacity.wait_random(0, 0.05),
                retry=tenacity.retry_if_exception(
                    lambda exc: isinstance(exc, DatabaseError) and refusal(exc) is None
                ),
                reraise=True,
            ):
                with attempt:
                    conns = []
                    try:
                        for _ in range(3):
                            conns.append(store.connect(worker=True))
                    except BaseException:
                        for conn in conns:
                            conn.close()
                        raise
            db, claim_db, listen = conns
            WorkerQueries.listen(listen, store.channel)
            WorkerQueries.listen(listen, self._control)  # cancels (see `take_notifies`)
            self.register(db)
            # A claim whose reply was lost with the old connection left tasks marked as ours.
            known = self.ledger.known_task_ids()
            returned = WorkerQueries.give_back_unknown(db, self.worker_id, known)
        except ConfigurationError:
            raise
        except (*DB_ERRORS, OSError) as exc:
            for conn in conns:
                conn.close()
            why = refusal(exc)
            if why is not None and not self.started:  # refused at start: stop (see run)
                raise self.refused(why) from None
            self._failures += 1
            delay = min(0.1 * 2 ** min(self._failures, 6), 5.0)
            self.next_attempt = time.monotonic() + delay
            if why is not None:
                self._still_refused(why)  # raises once the refusal has lasted too long
            else:
                self._refused_since = None  # an outage: waited out, however long it lasts
                self.log.warning(
                    "database_unavailable", error=describe(exc), retry_in=round(delay, 2)
                )
            return None
        if self._failures or self._lost:
            self.stats["db_reconnects"] += 1
            self.log.info(
                "database_reconnected", after_failures=self._failures, returned_unknown=returned
            )
        self._failures = 0
        self._lost = False
        self._refused_since = None
        self.db, self.claim_db, self.listen = db, claim_db, listen
        self.generation += 1
        self.ledger.claim_wanted = True
        return db

    def register(self, db: psycopg.Connection[Any]) -> None:
        """Record this worker (again) in the workers table."""
        WorkerQueries.register(
            db,
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            list(self.options.queues),
            list(self.task_names),
            self.options.processes,
        )

    def ensure(self) -> psycopg.Connection[Any] | None:
        """The writer's connection, reconnecting if it is gone (None: not now)."""
        if self.db is not None and not self.db.closed:
            return self.db
        if self.ledger.claiming:
            # Not before the claim in flight has returned: reconnecting hands back the running
            # tasks we do not know we hold, and that claim's rows may be among them. (TCP
            # keepalives bound how long a claim on a dead link can take.)
            return None
        self.close()
        return self.connect()

    def lost(self, exc: BaseException) -> None:
        self.log.warning("database_connection_lost", error=describe(exc))
        self._lost = True
        self.close()
        self.next_attempt = time.monotonic() + 0.05

    def close(self) -> None:
        """Drop the connections. One a round is still using is closed by that round's thread
        once the round returns (closing it under a statement in flight is not safe); the
        round's outcome is still taken in, but its error no longer resets the new ones."""
        self.before_close()
        busy = {
            id(db): thread for thread, (db, future) in self._in_use.items() if not future.done()
        }
        for conn in (self.db, self.claim_db, self.listen):
            if conn is None:
                continue
            if id(conn) in busy:
                busy[id(conn)].submit(close_quietly, conn)
            else:
                close_quietly(conn)
        self.db = self.claim_db = self.listen = None

    def take_notifies(self, ready: list[Any]) -> None:
        """Take the NOTIFYs on the LISTEN connection (if among ``ready``): one on the queue's
        channel asks for a claim (from the limited queues only if it says ``limited``); one on
        the control channel naming this worker asks it to
        cancel a task (payload: worker id, space, task id; those for other workers are
        ignored); one saying ``pause <queue>`` tells every worker that queue was paused."""
        if self.listen is not None and self.listen.fileno() in ready:
            cancel: list[uuid.UUID] = []
            try:
                for note in self.listen.notifies(timeout=0):
                    if note.channel != self._control:
                        if note.payload == "limited":
                            self.on_limited()
                        else:
                            self.ledger.claim_wanted = True
                        continue
                    worker, _, task = note.payload.partition(" ")
                    if worker == "pause":
                        self.on_pause(task)
                    elif worker == self._me:
                        try:
                            cancel.append(uuid.UUID(task))
                        except ValueError:
                            self.log.warning("control_message_ignored", payload=note.payload)
            except DB_ERRORS as exc:
                self.lost(exc)
            if cancel:
                self.on_cancel(cancel)

    def listen_fileno(self) -> int | None:
        if self.listen is not None and not self.listen.closed:
            return self.listen.fileno()
        return None

    # ---------------------------------------------------------------- start-up and refusals

    def ensure_schema(self, deadline: float) -> None:
        """Check (or create) the schema, waiting up to the start-up timeout for the database."""
        delay = 0.1
        while True:
            try:
                self.registry.store.ensure_schema()
                return
            except SchemaNotReady:
                raise  # a clear, fatal start-up error: waiting will not fix it
            except ConfigurationError as exc:  # a malformed URL, no database allowed...
                if "HYREX_LIKE_DATABASE_URL" in str(exc):
                    raise
                raise ConfigurationError(f"{exc}; {URL_HINT}") from None
            except (DatabaseError, psycopg.OperationalError) as exc:
                why = refusal(exc)
                if why is not None:
                    raise self.refused(why) from None
                if time.monotonic() + delay >= deadline:
                    raise DatabaseError(
                        f"cannot reach the database at {redact_dsn(self.registry.store.url())} "
                        f"after {self.options.startup_timeout:g}s: {describe(exc)}"
                    ) from None
                self.log.warning("database_unavailable", error=describe(exc), retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def connect_at_start(self, deadline: float) -> None:
        """Connect, retrying until ``deadline``."""
        while self.connect() is None:
            if time.monotonic() >= deadline:
                raise DatabaseError(
                    f"cannot reach the database at {redact_dsn(self.registry.store.url())} "
                    f"after {self.options.startup_timeout:g}s"
                )
            time.sleep(max(0.0, min(self.next_attempt, deadline) - time.monotonic()))
        self.started = True

    def refused(self, why: str, lasted: float | None = None) -> ConfigurationError:
        """The error for a database that refuses this worker for good: one line, no password."""
        url = self.registry.settings.database_url  # None: the embedded database
        where = f"the database at {redact_dsn(url)}" if url else "the embedded database"
        during = "" if lasted is None else f" for {lasted:.0f}s while it was running"
        return ConfigurationError(f"{where} refused this worker{during}: {why}; {URL_HINT}")

    def _still_refused(self, why: str) -> None:
        """A reconnect refused while running: retried (with the usual backoff) until the refusal
        has lasted --startup-timeout seconds, then the worker stops (`run`: exit code 2).

        At start a refusal stops the worker at once: the URL is wrong. Once it has run, the
        same errors also come from faults that heal: an LDAP, RADIUS or Kerberos server that
        is briefly away ("LDAP authentication failed"), a database dropped and created again,
        a role whose LOGIN is taken away and given back. Stopping at once would stop a whole
        fleet, and lose the results not yet written. The time counts from the first of an
        unbroken run of refusals: a successful reconnect or an outage (which is waited out
        for as long as it lasts) starts it again."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        lasted = now - self._refused_since
        bound = self.options.startup_timeout
        if lasted >= bound:
            raise self.refused(why, lasted)
        # the next try no later than the bound, so the worker stops when it says it will
        self.next_attempt = min(self.next_attempt, self._refused_since + bound)
        self.log.error(
            "database_refused",
            error=why,
            refused_for=round(lasted, 1),
            retry_in=round(max(0.0, self.next_attempt - now), 2),
            stops_in=round(bound - lasted, 1),
            hint=f"{URL_HINT}; the worker retries, and stops (exit code 2) if the refusal "
            f"lasts --startup-timeout ({bound:g}s)",
        )


def close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:
        pass


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` for a log line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def wait_for(future: Future[Any] | None, deadline: float) -> bool:
    """True once ``future`` is done (its round's outcome is in the round), waiting until
    ``deadline`` at most."""
    assert future is not None
    try:
        future.result(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return False
    return True
