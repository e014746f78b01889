"""Every SQL statement, the connection pools and the migrations runner.

Nothing outside this module builds or runs SQL. Statements live in ``queries.sql`` under a name;
the schema lives in numbered migration files (top-level ``sql/``, shipped as ``hyrex_like/_sql``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, LiteralString, NamedTuple

import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .config import Settings, redact_dsn
from .embedded import embedded_database_url
from .errors import ConfigurationError, DatabaseError, SchemaNotReady
from .logs import get_logger
from .states import RunStatus, TaskStatus
from .waker import Waker

log = get_logger("hyrex_like.store")

# Tasks closing an async pool from a sync close() on the pool's own loop (kept referenced
# until done, or the loop could drop them).
_closing: set[asyncio.Task[None]] = set()

SCHEMA_VERSION_LOCK = 0x6879726578  # "hyrex": the advisory lock key for migrations

# Used on a caller's connection only (see Store._in_schema): returns the old search_path.
_SWAP_SEARCH_PATH: LiteralString = (
    "WITH old AS MATERIALIZED (SELECT current_setting('search_path') AS value) "
    "SELECT value, set_config('search_path', %s, false) FROM old"
)
_SET_SEARCH_PATH: LiteralString = "SELECT set_config('search_path', %s, false)"


# ---------------------------------------------------------------------------- named queries


@cache
def queries() -> dict[str, LiteralString]:
    """Load ``queries.sql`` once: ``{name: statement}``."""
    text = resources.files("hyrex_like").joinpath("queries.sql").read_text("utf-8")
    out: dict[str, LiteralString] = {}
    for match in re.finditer(r"^-- (\w+) --\n(.*?)(?=^-- \w+ --\n|\Z)", text, re.M | re.S):
        body = "\n".join(
            line for line in match.group(2).splitlines() if not line.lstrip().startswith("--")
        ).strip()
        out[match.group(1)] = body  # trusted: the package's own file (mypy reads it as str)
    return out


def q(name: str) -> LiteralString:
    """The statement called ``name`` in ``queries.sql``."""
    return queries()[name]


class Numbered(NamedTuple):
    """A named statement in the form `PooledConnection.run_prepared` takes."""

    key: bytes
    """Its prepared-statement name: the query name and a digest of the text, so a server
    connection shared through a pooler never runs another version's statement by this name."""
    statement: bytes
    """The text with libpq's ``$1, $2...`` placeholders."""
    order: tuple[str, ...]
    """The parameter name each number stands for."""


@cache
def numbered(name: str) -> Numbered:
    """The statement called ``name`` as `Numbered` (built once per name)."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, q(name)).encode()
    digest = hashlib.sha1(text).hexdigest()[:12]
    return Numbered(f"hyrex_like_{name}_{digest}".encode(), text, tuple(order))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """The numbered migrations, in order, from the wheel or from a source checkout."""
    candidates: list[Path] = []
    packaged = resources.files("hyrex_like").joinpath("_sql")
    if packaged.is_dir():
        candidates = [Path(str(p)) for p in packaged.iterdir()]
    else:
        source = Path(__file__).resolve().parent.parent / "sql"
        if source.is_dir():
            candidates = list(source.iterdir())
    found = []
    for path in candidates:
        m = re.match(r"^(\d{4})_(\w+)\.sql$", path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path.read_text("utf-8")))
    if not found:
        raise ConfigurationError("hyrex-like is installed without its sql/ migrations")
    found.sort(key=lambda mig: mig.version)
    return found


def latest_version() -> int:
    return migrations()[-1].version


# ------------------------------------------------------------------------------ row models


def new_task_ids(n: int) -> list[uuid.UUID]:
    """``n`` time-ordered UUIDs (version 7), strictly increasing within this process."""
    global _last_task_id
    noise = os.urandom(10 * n)  # one system call for the batch; 74 random bits per id
    out = []
    with _task_id_lock:
        base = _uuid7_base()
        last = _last_task_id
        for k in range(n):
            last = _uuid7_next(base, int.from_bytes(noise[10 * k : 10 * k + 10]), last)
            out.append(uuid.UUID(int=last))
        _last_task_id = last
    return out


def new_task_id() -> uuid.UUID:
    """`new_task_ids` for one id, without the batch's lists (`send`'s hot path)."""
    global _last_task_id
    rand = int.from_bytes(os.urandom(10))
    with _task_id_lock:
        _last_task_id = value = _uuid7_next(_uuid7_base(), rand, _last_task_id)
    return uuid.UUID(int=value)


def _uuid7_base() -> int:
    """The version 7 bits for this millisecond: timestamp, version and variant."""
    ms = time.time_ns() // 1_000_000
    return (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62


def _uuid7_next(base: int, rand: int, last: int) -> int:
    """The id after ``last`` from 80 random bits (74 used). Within one millisecond the random
    bits would sort at random; ids from this process stay strictly increasing (RFC 9562 6.2,
    method 3) so a send_many batch is claimed in the order it was given. 62 random low bits
    leave room for any burst."""
    value = base | ((rand >> 64) & 0xFFF) << 64 | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    return value if value > last else last + 1


_task_id_lock = threading.Lock()
_last_task_id = 0


@dataclass(frozen=True)
class TaskRow:
    """A ``task`` row as read back."""

    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    status: TaskStatus
    args: Any
    max_retries: int
    timeout_seconds: float | None
    backoff_seconds: list[float]
    attempt_count: int
    failure_count: int
    run_after: datetime
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None
    worker_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    last_error: dict[str, Any] | None


@dataclass(frozen=True)
class RunRow:
    """A ``task_run`` row as read back."""

    task_id: uuid.UUID
    attempt_number: int
    status: RunStatus
    worker_id: uuid.UUID | None
    started_at: datetime
    finished_at: datetime | None
    result: Any
    error_type: str | None
    error_message: str | None
    traceback: str | None


@dataclass(slots=True)
class NewTask:
    """Everything needed to insert one task row."""

    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    args_json: str
    max_retries: int
    timeout_seconds: float | None
    backoff_seconds: list[float]
    run_after: datetime | None
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None

    def params(self) -> dict[str, Any]:
        """Parameters of ``insert_task``: text the statement casts (cheap to adapt)."""
        return {
            "id": str(self.id),
            "task_name": self.task_name,
            "queue": self.queue,
            "priority": self.priority,
            "args": self.args_json,
            "max_retries": self.max_retries,
            "timeout_seconds": self.timeout_seconds,
            "backoff_seconds": _array_literal(map(repr, self.backoff_seconds)),
            "run_after": self.run_after.isoformat() if self.run_after is not None else None,
            "parent_id": str(self.parent_id) if self.parent_id is not None else None,
            "root_id": str(self.root_id) if self.root_id is not None else None,
        }

    def copy_row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.task_name,
            self.queue,
            self.priority,
            self.args_json,
            self.max_retries,
            self.timeout_seconds,
            self.backoff_seconds,
            self.run_after.isoformat() if self.run_after is not None else "now",
            self.parent_id,
            self.root_id,
        )


# --------------------------------------------------------------------------------- the store


def _translate(exc: psycopg.Error, what: str) -> DatabaseError:
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return SchemaNotReady(
            "the hyrex-like tables are missing from this database/schema: "
            "run `hyrex-like init-db` (or enable auto_migrate)"
        )
    if isinstance(
        exc, psycopg.errors.UntranslatableCharacter | psycopg.errors.CharacterNotInRepertoire
    ):
        return DatabaseError(f"{what}: PostgreSQL rejected the text: {exc.diag.message_primary}")
    return DatabaseError(f"{what} failed: {type(exc).__name__}: {exc}")


def _sending(task: NewTask) -> str:
    """What a send of ``task`` is called in its errors (built on failure only)."""
    return f"sending task {task.task_name!r}"


def _retry_failed(what: str, first: psycopg.Error, again: psycopg.Error) -> DatabaseError:
    """The error of a send whose retry (see `Store.insert_task`) failed too: both causes."""
    if isinstance(again, PoolTimeout):
        retry = f"no connection within connect_timeout ({again})"
    else:
        retry = f"{type(again).__name__}: {again}"
    return DatabaseError(
        f"{what} failed: its connection was lost ({type(first).__name__}: "
        f"{str(first).strip()}); retried once on a fresh connection: {retry}"
    )


class PooledConnection(psycopg.Connection[Any]):
    """A connection of the store's pool (and the waker's): adds `run_prepared`."""

    _hl_statements: frozenset[bytes] = frozenset()  # prepared by run_prepared

    def run_prepared(self, name: str, params: Mapping[str, Any]) -> None:
        """Run the named statement (no rows back) straight through libpq, prepared once per
        connection: no cursor and no adapters, ~30 us less per call than ``cursor.execute``,
        which is most of what `send` costs on top of the round trip. Values go as text:
        None, str, or anything whose ``str()`` PostgreSQL parses (int, float)."""
        key, statement, order = numbered(name)
        values: Any = [  # libpq takes None as NULL (the stub says Sequence[Buffer])
            None if (v := params[k]) is None else (v if isinstance(v, str) else str(v)).encode()
            for k in order
        ]
        with self.lock:
            pgconn = self.pgconn
            if key not in self._hl_statements:
                self._prepare(key, statement)
            result = pgconn.exec_prepared(key, values)
            if result.status != pq.ExecStatus.COMMAND_OK and (
                result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
            ):  # the statement is gone (DISCARD ALL, a pooler): prepare it again, once
                self._prepare(key, statement)
                result = pgconn.exec_prepared(key, values)
        self._check_result(result)

    def _prepare(self, key: bytes, statement: bytes) -> None:
        result = self.pgconn.prepare(key, statement)
        # 42P05: a server connection shared through a pooler has it already. The name holds a
        # digest of the text, so it is this very statement.
        if result.error_field(pq.DiagnosticField.SQLSTATE) != b"42P05":
            self._check_result(result)
        self._hl_statements = self._hl_statements | {key}

    @staticmethod
    def _check_result(result: pq.abc.PGresult) -> None:
        if result.status != pq.ExecStatus.COMMAND_OK and result.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.errors.error_from_result(result, encoding="utf-8")


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

    def pool(self) -> ConnectionPool[PooledConnection]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self.ensure_schema()
                    pool: ConnectionPool[PooledConnection] = ConnectionPool(
                        self.url(),
                        connection_class=PooledConnection,
                        min_size=1,
                        max_size=self.settings.pool_max_size,
                        kwargs=self.connect_kwargs(),
                        open=False,
                        name="hyrex-like",
                    )
                    pool.open(wait=True, timeout=self.settings.connect_timeout + 5)
                    self._pool = pool
        return self._pool

    async def apool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        loop = asyncio.get_running_loop()
        if self._apool is not None and self._apool_loop is not loop:
            # Its background tasks died with the loop it was opened on (an earlier
            # asyncio.run()): it could not replace a connection. Start over on this loop.
            self._drop_apool()
        if self._apool is None:
            # migrating (or starting the embedded server) blocks: keep the event loop free
            await asyncio.to_thread(self.ensure_schema)
            apool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self.url(),
                min_size=1,
                max_size=self.settings.pool_max_size,
                kwargs=self.connect_kwargs(),
                open=False,
                name="hyrex-like-async",
            )
            await apool.open(wait=True, timeout=self.settings.connect_timeout + 5)
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
        """Close the async pool from outside its loop, without blocking that loop."""
        apool, loop = self._apool, self._apool_loop
        self._apool = self._apool_loop = None
        if apool is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:  # close() called from async code on the pool's own loop
            task = loop.create_task(apool.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        elif loop.is_running():  # its loop runs in another thread: close it there
            future = asyncio.run_coroutine_threadsafe(apool.close(), loop)
            future.result(timeout=self.settings.connect_timeout + 10)
        elif running is None and not loop.is_closed():  # a stopped loop, from sync code
            loop.run_until_complete(apool.close())
        else:
            # The loop is gone, and with it the pool's tasks: nothing can await its close. Or
            # it stopped, and this thread runs another loop, which forbids running it. Close
            # the sockets of its idle connections directly (psycopg_pool keeps them in
            # `_pool`; a connection out on loan died with its task, or waits on that loop).
            for conn in list(getattr(apool, "_pool", ())):
                conn.pgconn.finish()
            if not loop.is_closed():  # its workers stop if that loop ever runs again
                task = loop.create_task(apool.close())
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    # -- waking workers --------------------------------------------------------------------

    def _wake(self) -> None:
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

    def check_schema(self) -> None:
        """Raise SchemaNotReady unless the schema is at this library's version."""
        with self.connect() as c:
            try:
                row = c.execute(q("schema_version")).fetchone()
            except psycopg.errors.UndefinedTable:
                raise SchemaNotReady(
                    f"schema {self.schema!r} has no hyrex-like tables: run "
                    f"`hyrex-like init-db` (HYREX_LIKE_SCHEMA={self.schema})"
                ) from None
            self._check_version(row[0] if row else None)

    def _check_version(self, version: int | None) -> None:
        latest = latest_version()
        if version is None or version < latest:
            raise SchemaNotReady(
                f"schema {self.schema!r} is at version {version}, this library needs {latest}: "
                "run `hyrex-like migrate`"
            )
        if version > latest:
            raise SchemaNotReady(
                f"schema {self.schema!r} is at version {version}, newer than this library "
                f"({latest}): upgrade hyrex-like"
            )

    def migrate(self) -> list[int]:
        """Apply missing migrations; safe when many processes start at once. Returns versions."""
        try:
            return self._migrate()
        except psycopg.Error as exc:
            raise _translate(exc, f"migrating schema {self.schema!r}") from exc

    def _migrate(self) -> list[int]:
        applied: list[int] = []
        latest = latest_version()
        with self.connect(autocommit=False) as conn:
            # Fast path, without the lock or any DDL: a current schema needs one read, so every
            # process start stays cheap and a role without CREATE rights can still start.
            row = conn.execute(q("migrations_table_exists")).fetchone()
            if row and row[0]:
                row = conn.execute(q("schema_version")).fetchone()
                if row and row[0] is not None and row[0] >= latest:
                    conn.rollback()
                    self._check_version(row[0])
                    self._schema_checked = True
                    return applied
            conn.rollback()
            ident = sql.Identifier(self.schema)
            # The advisory lock serialises concurrent migrators; the loser then sees the
            # winner's work and applies nothing.
            conn.execute(q("lock_migrations"), {"key": SCHEMA_VERSION_LOCK})
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(q("create_migrations_table"))
            row = conn.execute(q("schema_version")).fetchone()
            current = row[0] if row and row[0] is not None else 0
            if current > latest:
                conn.rollback()
                self._check_version(current)
            for mig in migrations():
                if mig.version <= current:
                    continue
                conn.execute(mig.text)
                conn.execute(q("record_migration"), {"version": mig.version, "name": mig.name})
                applied.append(mig.version)
            conn.commit()
        if applied:
            log.info("schema_migrated", schema=self.schema, versions=applied)
        self._schema_checked = True
        return applied

    # -- sending ---------------------------------------------------------------------------

    # A caller's own connection (send(conn=...)) has its own search_path, while our statements
    # name tables unqualified. Point it at our schema for the call only and put the caller's
    # value back; if the statement failed, the caller's rollback undoes the change itself.

    @contextmanager
    def _in_schema(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
        self.ensure_schema()
        with conn.cursor() as cur:
            row = cur.execute(_SWAP_SEARCH_PATH, (self.schema,)).fetchone()
            assert row is not None
            yield cur
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                cur.execute(_SET_SEARCH_PATH, (row[0],))

    @asynccontextmanager
    async def _ain_schema(
        self, conn: psycopg.AsyncConnection[Any]
    ) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        if not self._schema_checked:
            await asyncio.to_thread(self.ensure_schema)
        async with conn.cursor() as cur:
            row = await (await cur.execute(_SWAP_SEARCH_PATH, (self.schema,))).fetchone()
            assert row is not None
            yield cur
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                await cur.execute(_SET_SEARCH_PATH, (row[0],))

    # A send on a pooled connection that turns out dead (the server restarted, or the backend
    # was terminated) is tried once more on a live one: the pool only learns that its idle
    # connections died when one is used. The task id is chosen by the client, so the retry
    # cannot write a second row: a duplicate key means the first try committed after all.
    # Sends on a caller's connection are never retried: the transaction is theirs.

    def insert_task(self, task: NewTask, conn: psycopg.Connection[Any] | None = None) -> None:
        """Insert one task: on ``conn``, in its transaction (workers wake when it commits);
        else on a pooled connection, in a transaction of its own."""
        try:
            if conn is not None:
                with self._in_schema(conn) as cur:
                    cur.execute(q("insert_task"), task.params())
                    cur.execute(q("notify_workers"), {"channel": self.channel})
                return
            # The hot path of `send`: getconn/putconn rather than the pool's context manager
            # (which commits an autocommit connection: ~15 us), and libpq without a cursor.
            pool = self._pool or self.pool()
            c = pool.getconn()
            try:
                c.run_prepared("insert_task", task.params())
            except psycopg.Error as exc:  # without a SQLSTATE when the link is gone
                if not c.broken:
                    raise
                lost: psycopg.Error | None = exc
            else:
                lost = None
            finally:
                pool.putconn(c)  # a broken connection is discarded by the pool
            if lost is not None:
                self._send_again(
                    lambda c: c.run_prepared("insert_task", task.params()), _sending(task), lost
                )
        except psycopg.Error as exc:
            raise _translate(exc, _sending(task)) from exc
        self._wake()

    def _send_again(
        self, send: Callable[[PooledConnection], None], what: str, first: psycopg.Error
    ) -> None:
        """The retry of a send whose pooled connection was dead (see above), waiting for a
        connection no longer than a connect would (``connect_timeout``)."""
        pool = self.pool()
        pool.check()  # drops every idle connection the restart killed, not one per send
        log.warning("send_retried", reason="connection lost", what=what)
        try:
            with pool.connection(timeout=self.settings.connect_timeout) as c:
                try:
                    send(c)
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != "task_pkey":
                        raise
                    # the first try committed before the connection died: done already
        except psycopg.Error as exc:
            raise _retry_failed(what, first, exc) from first

    async def ainsert_task(
        self, task: NewTask, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> None:
        try:
            if conn is not None:
                async with self._ain_schema(conn) as cur:
                    await cur.execute(q("insert_task"), task.params())
                    await cur.execute(q("notify_workers"), {"channel": self.channel})
                return
            pool = await self.apool()
            lost: psycopg.Error | None = None
            async with pool.connection() as c:
                try:
                    await c.execute(q("insert_task"), task.params(), prepare=True)
                except psycopg.Error as exc:
                    if not c.broken:
                        raise
                    lost = exc
            if lost is not None:  # see insert_task
                await self._asend_again(pool, task, lost)
        except psycopg.Error as exc:
            raise _translate(exc, _sending(task)) from exc
        self._wake()

    async def _asend_again(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        task: NewTask,
        first: psycopg.Error,
    ) -> None:
        """`_send_again` for `ainsert_task`."""
        what = _sending(task)
        await pool.check()
        log.warning("send_retried", reason="connection lost", what=what)
        try:
            async with pool.connection(timeout=self.settings.connect_timeout) as c:
                try:
                    await c.execute(q("insert_task"), task.params(), prepare=True)
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != "task_pkey":
                        raise
        except psycopg.Error as exc:
            raise _retry_failed(what, first, exc) from first

    def insert_tasks(
        self, tasks: Sequence[NewTask], conn: psycopg.Connection[Any] | None = None
    ) -> None:
        """Insert many tasks with one COPY, in one transaction (all or none)."""
        if not tasks:
            return
        what = f"sending {len(tasks)} tasks"
        try:
            if conn is not None:
                with self._in_schema(conn) as cur:
                    self._copy(conn, tasks)
                    cur.execute(q("notify_workers"), {"channel": self.channel})
                return
            lost: psycopg.Error | None = None
            with self.pool().connection() as c:
                try:
                    with c.transaction():
                        self._copy(c, tasks)
                except psycopg.Error as exc:
                    if not c.broken:
                        raise
                    lost = exc
            if (
                lost is not None
            ):  # see insert_task; the COPY is one transaction, so all rows or none

                def copy_again(c: PooledConnection) -> None:
                    with c.transaction():
                        self._copy(c, tasks)

                self._send_again(copy_again, what, lost)
        except psycopg.Error as exc:
            raise _translate(exc, what) from exc
        self._wake()

    @staticmethod
    def _copy(conn: psycopg.Connection[Any], tasks: Iterable[NewTask]) -> None:
        with conn.cursor() as cur, cur.copy(q("copy_tasks")) as copy:
            copy.set_types(
                # args and run_after go as text: the server parses them (JSON already dumped)
                [
                    "uuid",
                    "text",
                    "text",
                    "int2",
                    "text",
                    "int4",
                    "float8",
                    "float8[]",
                    "text",
                    "uuid",
                    "uuid",
                ]
            )
            for task in tasks:
                copy.write_row(task.copy_row())

    # -- reading ---------------------------------------------------------------------------

    def get_task(self, task_id: uuid.UUID) -> tuple[TaskRow | None, list[RunRow]]:
        try:
            with self.pool().connection() as c:
                with c.cursor(row_factory=dict_row) as cur:
                    row = cur.execute(q("get_task"), {"id": task_id}).fetchone()
                    runs = cur.execute(q("get_task_runs"), {"id": task_id}).fetchall()
        except psycopg.Error as exc:
            raise _translate(exc, f"reading task {task_id}") from exc
        return (
            (TaskRow(**(row | {"status": TaskStatus(row["status"])})) if row else None),
            [RunRow(**(r | {"status": RunStatus(r["status"])})) for r in runs],
        )

    def execute(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run the named statement on a pooled connection; for small admin reads."""
        try:
            with self.pool().connection() as c:
                cur = c.execute(q(name), params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise _translate(exc, name) from exc


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


# ------------------------------------------------------------------ worker-side statements
# The dispatcher holds its own connections (not pooled) and calls these with them; psycopg
# errors propagate so the dispatcher can tell a dropped connection from a bad row.


class ClaimedRow(NamedTuple):
    id: uuid.UUID
    task_name: str
    queue: str
    priority: int
    args: str
    attempt: int
    max_retries: int
    timeout_seconds: float | None
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None


class FinishedRow(NamedTuple):
    """The outcome of one attempt, to be written by `finish_runs`."""

    task_id: uuid.UUID
    task_name: str
    attempt: int
    status: RunStatus  # a final one: RUN_FINAL
    retryable: bool
    result: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    started_at: float | None  # epoch seconds, as measured in the executor
    finished_at: float


def _array_literal(elements: Iterable[str]) -> str:
    """A PostgreSQL array literal of elements that need no quoting (numbers, UUIDs, words)."""
    return "{" + ",".join(elements) + "}"


def _array_text(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of text elements (cast in SQL to the element type).

    Every element is quoted, so only backslash and double quote need escaping; None is NULL.
    PostgreSQL text cannot hold NUL: one is stored as the four characters \\x00. A lone
    surrogate (an exception message may hold one) cannot be encoded: it becomes "?".
    """
    out = []
    for value in values:
        if value is None:
            out.append("NULL")
            continue
        if not value.isascii():
            value = value.encode("utf-8", "replace").decode("utf-8")
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        out.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return _array_literal(out)


# Session settings of the worker's connections. Queue tables change size faster than
# statistics follow (a fresh table holding 20,000 queued rows looks empty to the planner),
# and then it sorts the whole queue on every claim. Every worker statement is an index
# lookup or an ordered index scan by design, so steer the planner away from the rest.
WORKER_PLANNER_OPTIONS = (
    "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_hashjoin=off "
    "-c enable_mergejoin=off -c enable_material=off"
)


WORKER_TCP_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


class WorkerQueries:
    """The statements a worker runs, over a connection it owns."""

    @staticmethod
    def claim(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        task_names: list[str],
        queues: list[str],
        limit: int,
    ) -> list[ClaimedRow]:
        cur = conn.execute(
            q("claim_tasks"),
            {
                "worker_id": worker_id,
                "task_names": task_names,
                "queues": queues,
                "limit": limit,
            },
            prepare=True,
        )
        return [ClaimedRow._make(row) for row in cur.fetchall()]

    @staticmethod
    def finish_params(worker_id: uuid.UUID, rows: Sequence[FinishedRow]) -> dict[str, Any]:
        """``finish_runs``' parameters: one array literal per column, built by joining text.

        (psycopg adapts a list element by element in Python, which cost more than the
        statement; one JSON document cost the database ~1 us more per row to take apart.)
        Results are JSON already; a JSON null is stored as SQL NULL.
        """
        return {
            "worker_id": worker_id,
            "task_ids": _array_literal([str(r.task_id) for r in rows]),
            "attempts": _array_literal([str(r.attempt) for r in rows]),
            "statuses": _array_literal([r.status for r in rows]),  # a fixed set of words
            "retryable": _array_literal(["t" if r.retryable else "f" for r in rows]),
            "results": _array_text(None if r.result == "null" else r.result for r in rows),
            "error_types": _array_text(r.error_type for r in rows),
            "error_messages": _array_text(r.error_message for r in rows),
            "tracebacks": _array_text(r.traceback for r in rows),
            # finite floats: repr is a valid float8 literal
            "started": _array_literal(
                ["NULL" if r.started_at is None else repr(r.started_at) for r in rows]
            ),
            "finished": _array_literal([repr(r.finished_at) for r in rows]),
        }

    @staticmethod
    def finish(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, rows: Sequence[FinishedRow]
    ) -> list[tuple[uuid.UUID, str, datetime, int]]:
        cur = conn.execute(
            q("finish_runs"), WorkerQueries.finish_params(worker_id, rows), prepare=True
        )
        return [(row[0], row[1], row[2], row[3]) for row in cur.fetchall()]

    @staticmethod
    def give_back(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, items: Sequence[tuple[uuid.UUID, int]]
    ) -> int:
        cur = conn.execute(
            q("give_back_tasks"),
            {
                "worker_id": worker_id,
                "task_ids": [i[0] for i in items],
                "attempts": [i[1] for i in items],
            },
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def give_back_unknown(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, known: Sequence[uuid.UUID]
    ) -> int:
        cur = conn.execute(q("give_back_unknown"), {"worker_id": worker_id, "known": list(known)})
        row = cur.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def register(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        hostname: str,
        pid: int,
        queues: list[str],
        task_names: list[str],
        processes: int,
    ) -> None:
        conn.execute(
            q("register_worker"),
            {
                "id": worker_id,
                "hostname": hostname,
                "pid": pid,
                "queues": queues,
                "task_names": task_names,
                "processes": processes,
            },
        )

    @staticmethod
    def heartbeat(conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> bool:
        """True if our worker row is still ours (False: another worker declared us lost)."""
        return conn.execute(q("heartbeat"), {"id": worker_id}, prepare=True).fetchone() is not None

    @staticmethod
    def stop(conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> None:
        conn.execute(q("stop_worker"), {"id": worker_id})

    @staticmethod
    def rescue(
        conn: psycopg.Connection[Any],
        stale_seconds: float,
        *,
        full: bool = True,
    ) -> tuple[int, int]:
        """Requeue tasks of workers with stale heartbeats: (workers marked lost, tasks).

        ``full`` also requeues running tasks whose worker is not running at all; that reads
        every running task, so a worker asks for it only every ``stale_seconds``.
        """
        row = conn.execute(
            q("rescue_lost_tasks"),
            {"stale_seconds": stale_seconds, "full": full},
            prepare=True,
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @staticmethod
    def listen(conn: psycopg.Connection[Any], channel: str) -> None:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
