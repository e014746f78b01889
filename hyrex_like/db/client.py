"""`Store`: the connections (pools, sync and async, opened lazily) and statements for one
database URL and schema; sends, migrations and the worker's statements live beside it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..config import Settings, redact_dsn
from ..embedded import embedded_database_url
from ..errors import ConfigurationError, DatabaseError
from ..states import TaskStatus
from . import admin, migrate, reads, sends
from .errors import _translate
from .pools import PooledConnection, close_apool, open_apool, open_pool
from .rows import NewTask, RunRow, TaskRow
from .waker import Waker
from .worker_queries import WORKER_PLANNER_OPTIONS, WORKER_TCP_OPTIONS


class Store:
    """Connections and statements for one database URL and schema. Opened lazily."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._url: str | None = None
        self._pool: ConnectionPool[PooledConnection] | None = None
        self._apool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None  # the loop it lives on
        self._waker: Waker | None = None
        self._schema_checked = False

    # -- connection settings -------------------------------------------------------------

    @property
    def schema(self) -> str:
        return self.settings.schema_name

    @property
    def channel(self) -> str:
        return "hyrex_like_" + self.schema

    @property
    def control_channel(self) -> str:
        """Where cancels reach the workers (`admin.control_channel`)."""
        return admin.control_channel(self.schema)

    def url(self) -> str:
        """The database URL, starting the embedded server if none is configured."""
        if self._url is None:
            if self.settings.database_url:
                self._url = self.settings.database_url
            elif self.settings.allow_embedded:
                self._url = embedded_database_url(self.settings.embedded_dir)
            else:
                raise ConfigurationError(
                    "no database configured: set HYREX_LIKE_DATABASE_URL or pass database_url= "
                    "(the embedded fallback is forbidden by HYREX_LIKE_NO_EMBEDDED)"
                )
        return self._url

    def connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, int(self.settings.connect_timeout)),
            "options": f"-c search_path={self.schema}",
            "application_name": "hyrex-like",
            # `PooledConnection.run_prepared` sends text as UTF-8; psycopg encodes it so too
            "client_encoding": "utf8",
        }

    def connect(
        self,
        *,
        worker: bool = False,
        connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
        **overrides: Any,
    ) -> psycopg.Connection[Any]:
        """A new connection of our own (the worker holds a few, long-lived)."""
        kwargs = self.connect_kwargs() | overrides
        if worker:
            kwargs["options"] = f"{kwargs['options']} {WORKER_PLANNER_OPTIONS}"
            # A worker's statements run on threads that must not hang on a link that died
            # silently: TCP keepalives and a send timeout turn it into an error in ~30 s.
            kwargs = WORKER_TCP_OPTIONS | kwargs
        _check_url(self.url())
        try:
            return connection_class.connect(self.url(), **kwargs)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to {redact_dsn(self.url())}: {_scrub(str(exc), self.url())}"
            ) from None
        except Exception as exc:  # malformed conninfo raises ProgrammingError etc.
            raise ConfigurationError(
                f"invalid database URL {redact_dsn(self.url())}: {_scrub(str(exc), self.url())}"
            ) from None

    # -- pools -----------------------------------------------------------------------------

    def pool(self) -> ConnectionPool[PooledConnection]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self.ensure_schema()
                    self._pool = open_pool(self.url(), self.connect_kwargs(), self.settings)
        return self._pool

    async def apool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        loop = asyncio.get_running_loop()
        if self._apool is not None and self._apool_loop is not loop:
            # Its background tasks died with the loop it was opened on (an earlier
            # asyncio.run()): it could not replace a connection. Start over on this loop.
            self._drop_apool()
        if self._apool is None:
            await self.aensure_schema()
            apool = await open_apool(self.url(), self.connect_kwargs(), self.settings)
            if self._apool is None:
                self._apool, self._apool_loop = apool, loop
            else:  # another coroutine won the race
                await apool.close()
        return self._apool

    def idle(self) -> bool:
        """True while nothing is open (nothing a forked process could share by accident)."""
        return self._pool is None and self._apool is None and self._waker is None

    def close(self) -> None:
        """Close every pool and the waker. The next use opens them again and checks the
        schema again (the database may have been re-created meanwhile)."""
        self._close_waker()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._drop_apool()
        self._schema_checked = False

    async def aclose(self) -> None:
        """`close` from async code: the async pool is closed on its own loop, the rest in a
        thread, so the event loop never blocks."""
        await asyncio.to_thread(self._close_waker)
        apool, loop = self._apool, self._apool_loop
        if apool is not None and loop is asyncio.get_running_loop():
            self._apool = self._apool_loop = None
            await apool.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.close)
        self._drop_apool()  # one opened on another loop
        self._schema_checked = False

    def _drop_apool(self) -> None:
        apool, loop = self._apool, self._apool_loop
        self._apool = self._apool_loop = None
        if apool is not None and loop is not None:
            close_apool(apool, loop, timeout=self.settings.connect_timeout + 10)

    # -- waking workers --------------------------------------------------------------------

    def wake_workers(self) -> None:
        """After tasks committed on a pooled connection: have idle workers notified."""
        waker = self._waker
        if waker is None:
            with self._lock:
                if self._waker is None:
                    self._waker = Waker(
                        lambda: self.connect(
                            connection_class=PooledConnection,
                            application_name="hyrex-like-waker",
                            **WORKER_TCP_OPTIONS,  # a dead link ends a NOTIFY in ~30 s
                        ),
                        self._notify,
                        self.settings.wake_interval,
                    )
                waker = self._waker
        waker.wake()

    def _notify(self, conn: psycopg.Connection[Any]) -> None:
        assert isinstance(conn, PooledConnection)
        conn.run_prepared("notify_workers", {"channel": self.channel})

    def _close_waker(self) -> None:
        with self._lock:
            waker, self._waker = self._waker, None
        if waker is not None:
            waker.close(timeout=self.settings.connect_timeout + 1)

    # -- schema ----------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Check the schema version once; migrate if allowed, else raise SchemaNotReady."""
        if self._schema_checked:
            return
        if self.settings.auto_migrate:
            self.migrate()
        else:
            self.check_schema()
        self._schema_checked = True

    async def aensure_schema(self) -> None:
        """`ensure_schema` from async code: migrating (or starting the embedded server)
        blocks, so it runs in a thread."""
        if not self._schema_checked:
            await asyncio.to_thread(self.ensure_schema)

    def check_schema(self) -> None:
        """Raise SchemaNotReady unless the schema is at this library's version."""
        with self.connect() as c:
            migrate.check_schema(c, self.schema)

    def migrate(self) -> list[int]:
        """Apply missing migrations; safe when many processes start at once. Returns versions."""
        try:
            with self.connect(autocommit=False) as conn:
                applied = migrate.apply_migrations(conn, self.schema)
        except psycopg.Error as exc:
            raise _translate(exc, f"migrating schema {self.schema!r}") from exc
        self._schema_checked = True
        return applied

    # -- sending (see `hyrex_like.db.sends`) -----------------------------------------------

    def insert_task(self, task: NewTask, conn: psycopg.Connection[Any] | None = None) -> None:
        """Insert one task: on ``conn``, in its transaction (workers wake when it commits);
        else on a pooled connection, in a transaction of its own."""
        sends.insert_task(self, task, conn)

    async def ainsert_task(
        self, task: NewTask, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> None:
        """`insert_task` from async code."""
        await sends.ainsert_task(self, task, conn)

    def insert_tasks(
        self, tasks: Sequence[NewTask], conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Insert many tasks with one COPY, in one transaction (all or none)."""
        sends.insert_tasks(self, tasks, conn)

    def insert_task_once(
        self, task: NewTask, conn: psycopg.Connection[Any] | None = None
    ) -> tuple[uuid.UUID, bool]:
        """Insert ``task`` (it has an idempotency key) unless a live task of its name holds the
        key: (the id of the task now holding it, True if that is not ``task``)."""
        return sends.insert_task_once(self, task, conn)

    async def ainsert_task_once(
        self, task: NewTask, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> tuple[uuid.UUID, bool]:
        """`insert_task_once` from async code."""
        return await sends.ainsert_task_once(self, task, conn)

    def insert_tasks_once(
        self, tasks: Sequence[NewTask], conn: psycopg.Connection[Any] | None = None
    ) -> list[tuple[uuid.UUID, bool]]:
        """`insert_task_once` for a `send_many` with keys, in one transaction (all or none)."""
        return sends.insert_tasks_once(self, tasks, conn)

    def _send_again(
        self, send: Callable[[PooledConnection], object], what: str, first: psycopg.Error
    ) -> None:
        """Retry a send whose pooled connection was dead (`sends.send_again`)."""
        sends.send_again(self.pool(), send, what, first, self.settings.connect_timeout)

    # -- reading ---------------------------------------------------------------------------

    def get_task(self, task_id: uuid.UUID) -> tuple[TaskRow | None, list[RunRow]]:
        """A task's row and its runs (None: no such task)."""
        return reads.get_task(self.pool(), task_id)

    def schedule_states(
        self, names: Sequence[str]
    ) -> dict[str, tuple[datetime, uuid.UUID, TaskStatus | None]]:
        """For each of these schedules (by task name) that ever fired: its newest tick, that
        tick's task and the task's status (None: the task was pruned since)."""
        return reads.schedule_states(self.pool(), names)

    # -- by hand (see `hyrex_like.db.admin`) ---------------------------------------------

    def cancel(
        self, task_id: uuid.UUID, children: bool = False
    ) -> list[tuple[uuid.UUID, TaskStatus]]:
        """Cancel a task (and its descendants): each task changed with its new status."""
        return admin.cancel(self.pool(), self.schema, task_id, children)

    def retry(self, task_id: uuid.UUID) -> bool:
        """Queue a failed or canceled task again (False: it is neither)."""
        return admin.retry(self.pool(), task_id)

    def prune(self, older_than: float, statuses: Sequence[TaskStatus], **kwargs: Any) -> int:
        """Delete finished tasks older than ``older_than`` seconds, in small batches, on a
        connection of its own (`admin.prune`)."""
        self.ensure_schema()
        try:
            with self.connect() as conn:
                return admin.prune(conn, older_than, statuses, **kwargs)
        except psycopg.Error as exc:
            raise _translate(exc, "pruning finished tasks") from exc

    def execute(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run the named statement on a pooled connection; for small admin reads."""
        return reads.execute(self.pool(), name, params)


def _scrub(message: str, url: str) -> str:
    """Remove a password that a driver message might echo back."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


def _check_url(url: str) -> None:
    """A malformed URL is a configuration error, not an outage: parse it before connecting."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        # The parser's message quotes the offending token, which may be part of a password.
        raise ConfigurationError(
            f"invalid database URL {redact_dsn(url)}: it is neither a postgresql:// URL nor a "
            "key=value connection string"
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not port.strip().isdigit():
            raise ConfigurationError(
                f"invalid database URL {redact_dsn(url)}: port {port.strip()!r} is not a number"
            )
