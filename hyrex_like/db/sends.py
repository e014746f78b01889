"""Sending tasks: one (sync or async) or many by COPY, on a pooled connection or the caller's.

A send on a pooled connection that turns out dead (the server restarted, or the backend was
terminated) is tried once more on a live one: the pool only learns that its idle connections
died when one is used. The task id is chosen by the client, so the retry cannot write a second
row: a duplicate key means the first try committed after all. Sends on a caller's connection are
never retried: the transaction is theirs.

The sync and async call paths stand side by side and only do the I/O; the statements and
parameters (`NewTask.params`) and the retry decisions (`_lost_connection`, `_retrying`,
`_settle_retry`) are written once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..logs import get_logger
from .errors import _retry_failed, _translate
from .pools import PooledConnection
from .queries import _SET_SEARCH_PATH, _SWAP_SEARCH_PATH, q
from .rows import NewTask

if TYPE_CHECKING:
    from .client import Store

# The database layer's events keep the logger name documented before it became a package.
log = get_logger("hyrex_like.db")

# The columns of ``copy_tasks``; args, run_after and trace_context go as text: the server
# parses them (the JSON is dumped already).
_COPY_TYPES = [
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
    "text",
]


def _sending(task: NewTask) -> str:
    """What a send of ``task`` is called in its errors (built on failure only)."""
    return f"sending task {task.task_name!r}"


# -- the retry decisions, for both paths ---------------------------------------------------


def _lost_connection(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], exc: psycopg.Error
) -> psycopg.Error:
    """The first try on a pooled connection raised ``exc`` (without a SQLSTATE when the link
    is gone): it is the cause of a retry if the connection was lost, else it is raised again."""
    if not conn.broken:
        raise exc
    return exc


def _retrying(what: str) -> None:
    log.warning("send_retried", reason="connection lost", what=what)


def _settle_retry(what: str, first: psycopg.Error, again: psycopg.Error) -> None:
    """The retry raised ``again``: done if the first try had committed before its connection
    died (its task id is taken), else the error naming both causes."""
    if (
        isinstance(again, psycopg.errors.UniqueViolation)
        and again.diag.constraint_name == "task_pkey"
    ):
        return
    raise _retry_failed(what, first, again) from first


def send_again(
    pool: ConnectionPool[PooledConnection],
    send: Callable[[PooledConnection], object],
    what: str,
    first: psycopg.Error,
    timeout: float,
) -> None:
    """The retry of a send whose pooled connection was dead, waiting for a connection no
    longer than a connect would (``timeout``: the ``connect_timeout``)."""
    pool.check()  # drops every idle connection the restart killed, not one per send
    _retrying(what)
    try:
        with pool.connection(timeout=timeout) as c:
            send(c)
    except psycopg.Error as again:
        _settle_retry(what, first, again)


async def asend_again(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    send: Callable[[psycopg.AsyncConnection[Any]], Awaitable[object]],
    what: str,
    first: psycopg.Error,
    timeout: float,
) -> None:
    """`send_again` on the async pool."""
    await pool.check()
    _retrying(what)
    try:
        async with pool.connection(timeout=timeout) as c:
            await send(c)
    except psycopg.Error as again:
        _settle_retry(what, first, again)


# -- a caller's connection -----------------------------------------------------------------
# A caller's own connection (send(conn=...)) has its own search_path, while our statements
# name tables unqualified. Point it at our schema for the call only and put the caller's
# value back; if the statement failed, the caller's rollback undoes the change itself.


@contextmanager
def _in_schema(store: Store, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
    store.ensure_schema()
    # tuple rows whatever the caller's connection makes (a web app's dict_row, say)
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(_SWAP_SEARCH_PATH, (store.schema,)).fetchone()
        assert row is not None
        try:
            yield cur
        finally:  # (also when the statement raised, on an autocommit connection)
            if _can_restore(conn):
                cur.execute(_SET_SEARCH_PATH, (row[0],))


@asynccontextmanager
async def _ain_schema(
    store: Store, conn: psycopg.AsyncConnection[Any]
) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
    await store.aensure_schema()
    async with conn.cursor(row_factory=tuple_row) as cur:
        row = await (await cur.execute(_SWAP_SEARCH_PATH, (store.schema,))).fetchone()
        assert row is not None
        try:
            yield cur
        finally:
            if _can_restore(conn):
                await cur.execute(_SET_SEARCH_PATH, (row[0],))


def _can_restore(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """The caller's search_path can be put back: the connection works and is not in a failed
    transaction (whose rollback undoes the change itself)."""
    status = conn.info.transaction_status
    return not conn.broken and status in (
        psycopg.pq.TransactionStatus.IDLE,
        psycopg.pq.TransactionStatus.INTRANS,
    )


# -- the call paths ------------------------------------------------------------------------


def insert_task(store: Store, task: NewTask, conn: psycopg.Connection[Any] | None) -> None:
    """`Store.insert_task`."""
    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                cur.execute(q("insert_task"), task.params())
                cur.execute(q("notify_workers"), {"channel": store.channel})
            return
        # The hot path of `send`: getconn/putconn, as the pool's context manager commits
        # even an autocommit connection, and libpq without a cursor.
        pool = store.pool()
        c = pool.getconn()
        try:
            c.run_prepared("insert_task", task.params())
        except psycopg.Error as exc:
            lost: psycopg.Error | None = _lost_connection(c, exc)
        else:
            lost = None
        finally:
            pool.putconn(c)  # a broken connection is discarded by the pool
        if lost is not None:
            store._send_again(
                lambda c: c.run_prepared("insert_task", task.params()), _sending(task), lost
            )
    except psycopg.Error as exc:
        raise _translate(exc, _sending(task)) from exc
    store.wake_workers()


async def ainsert_task(
    store: Store, task: NewTask, conn: psycopg.AsyncConnection[Any] | None
) -> None:
    """`Store.ainsert_task`."""
    try:
        if conn is not None:
            async with _ain_schema(store, conn) as cur:
                await cur.execute(q("insert_task"), task.params())
                await cur.execute(q("notify_workers"), {"channel": store.channel})
            return
        pool = await store.apool()
        lost: psycopg.Error | None = None
        async with pool.connection() as c:
            try:
                await c.execute(q("insert_task"), task.params(), prepare=True)
            except psycopg.Error as exc:
                lost = _lost_connection(c, exc)
        if lost is not None:
            await asend_again(
                pool,
                lambda c: c.execute(q("insert_task"), task.params(), prepare=True),
                _sending(task),
                lost,
                store.settings.connect_timeout,
            )
    except psycopg.Error as exc:
        raise _translate(exc, _sending(task)) from exc
    store.wake_workers()


def insert_tasks(
    store: Store, tasks: Sequence[NewTask], conn: psycopg.Connection[Any] | None
) -> None:
    """`Store.insert_tasks`."""
    if not tasks:
        return
    what = f"sending {len(tasks)} tasks"
    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                _copy(conn, tasks)
                cur.execute(q("notify_workers"), {"channel": store.channel})
            return
        # the COPY is one transaction, so all rows or none
        _on_pool(store, lambda c: _copy_committed(c, tasks), what)
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc
    store.wake_workers()


def _on_pool(store: Store, send: Callable[[psycopg.Connection[Any]], object], what: str) -> None:
    """``send`` on a pooled connection, tried once more on a fresh one if that connection
    turns out dead (`send_again`)."""
    lost: psycopg.Error | None = None
    with store.pool().connection() as c:
        try:
            send(c)
        except psycopg.Error as exc:
            lost = _lost_connection(c, exc)
    if lost is not None:
        store._send_again(send, what, lost)


def _copy_committed(conn: psycopg.Connection[Any], tasks: Iterable[NewTask]) -> None:
    with conn.transaction():
        _copy(conn, tasks)


def _copy(conn: psycopg.Connection[Any], tasks: Iterable[NewTask]) -> None:
    with conn.cursor() as cur, cur.copy(q("copy_tasks")) as copy:
        copy.set_types(_COPY_TYPES)
        for task in tasks:
            copy.write_row(task.copy_row())


# -- sends with an idempotency key -----------------------------------------------------------
# One statement inserts the row or finds the live task holding its key. When the holder
# committed after the statement's snapshot (the insert waited for it), neither comes back: the
# statement runs again and sees it. A retry after a lost connection finds our own row if the
# first try committed (same id): not a deduplication.

_KEY_TRIES = 5


def _once_outcome(task: NewTask, rows: Sequence[tuple[Any, ...]]) -> tuple[Any, bool] | None:
    if not rows:
        return None
    found, deduplicated = rows[0][0], bool(rows[0][1])
    return found, deduplicated and found != task.id


def _key_race_lost(task: NewTask) -> psycopg.Error:
    return psycopg.errors.SerializationFailure(
        f"task {task.task_name!r} with idempotency key {task.idempotency_key!r}: the task "
        f"holding the key kept changing over {_KEY_TRIES} tries (or this transaction's "
        "snapshot cannot see it: send with a key under READ COMMITTED)"
    )


def _once_on(cur: psycopg.Cursor[Any], task: NewTask) -> tuple[Any, bool]:
    for _ in range(_KEY_TRIES):
        outcome = _once_outcome(task, cur.execute(q("insert_task_once"), task.params()).fetchall())
        if outcome is not None:
            return outcome
    raise _key_race_lost(task)


async def _aonce_on(cur: psycopg.AsyncCursor[Any], task: NewTask) -> tuple[Any, bool]:
    for _ in range(_KEY_TRIES):
        await cur.execute(q("insert_task_once"), task.params())
        outcome = _once_outcome(task, await cur.fetchall())
        if outcome is not None:
            return outcome
    raise _key_race_lost(task)


def insert_task_once(
    store: Store, task: NewTask, conn: psycopg.Connection[Any] | None
) -> tuple[Any, bool]:
    """`Store.insert_task_once`: (the task's id, whether it was deduplicated)."""
    outcome: list[tuple[Any, bool]] = []

    def send(c: psycopg.Connection[Any]) -> None:
        with c.cursor() as cur:
            outcome.append(_once_on(cur, task))

    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                found = _once_on(cur, task)
                if not found[1]:
                    cur.execute(q("notify_workers"), {"channel": store.channel})
            return found
        _on_pool(store, send, _sending(task))
    except psycopg.Error as exc:
        raise _translate(exc, _sending(task)) from exc
    found = outcome[-1] if outcome else (task.id, False)
    if not found[1]:
        store.wake_workers()
    return found


async def ainsert_task_once(
    store: Store, task: NewTask, conn: psycopg.AsyncConnection[Any] | None
) -> tuple[Any, bool]:
    """`Store.ainsert_task_once`."""
    outcome: list[tuple[Any, bool]] = []

    async def send(c: psycopg.AsyncConnection[Any]) -> None:
        async with c.cursor() as cur:
            outcome.append(await _aonce_on(cur, task))

    try:
        if conn is not None:
            async with _ain_schema(store, conn) as cur:
                found = await _aonce_on(cur, task)
                if not found[1]:
                    await cur.execute(q("notify_workers"), {"channel": store.channel})
            return found
        pool = await store.apool()
        lost: psycopg.Error | None = None
        async with pool.connection() as c:
            try:
                await send(c)
            except psycopg.Error as exc:
                lost = _lost_connection(c, exc)
        if lost is not None:
            await asend_again(pool, send, _sending(task), lost, store.settings.connect_timeout)
    except psycopg.Error as exc:
        raise _translate(exc, _sending(task)) from exc
    found = outcome[-1] if outcome else (task.id, False)
    if not found[1]:
        store.wake_workers()
    return found


def insert_tasks_once(
    store: Store, tasks: Sequence[NewTask], conn: psycopg.Connection[Any] | None
) -> list[tuple[Any, bool]]:
    """`Store.insert_tasks_once`: every task of one `send_many` (same name and config, a key
    each, None for none) in one transaction; per task, (its id or its key holder's, whether
    it was deduplicated). A key given twice in the batch: the later ones get the first's id."""
    if not tasks:
        return []
    what = f"sending {len(tasks)} tasks"
    outcome: list[list[tuple[Any, bool]]] = []

    def send(c: psycopg.Connection[Any]) -> None:
        with c.transaction(), c.cursor() as cur:
            outcome.append(_many_once_on(cur, tasks))

    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                found = _many_once_on(cur, tasks)
                cur.execute(q("notify_workers"), {"channel": store.channel})
            return found
        _on_pool(store, send, what)
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc
    store.wake_workers()
    return outcome[-1] if outcome else [(t.id, False) for t in tasks]


def _many_once_on(cur: psycopg.Cursor[Any], tasks: Sequence[NewTask]) -> list[tuple[Any, bool]]:
    first = tasks[0]
    params = first.params() | {
        "ids": [t.id for t in tasks],
        "args": [t.args_json for t in tasks],
        "keys": [t.idempotency_key for t in tasks],
    }
    inserted = {row[0] for row in cur.execute(q("insert_tasks_once"), params).fetchall()}
    keys = [t.idempotency_key for t in tasks if t.id not in inserted]
    holders: dict[str, Any] = {}
    for _ in range(_KEY_TRIES):
        missing = [k for k in keys if k is not None and k not in holders]
        if not missing:
            break
        params = {"task_name": first.task_name, "keys": missing}
        holders.update(dict(cur.execute(q("find_live_keys"), params).fetchall()))
    else:
        raise _key_race_lost(
            next(
                t
                for t in tasks
                if t.idempotency_key is not None and t.idempotency_key not in holders
            )
        )
    out: list[tuple[Any, bool]] = []
    for t in tasks:
        if t.id in inserted:
            out.append((t.id, False))
        else:
            assert t.idempotency_key is not None  # an unkeyed row always inserts
            holder = holders[t.idempotency_key]
            out.append((holder, holder != t.id))
    return out
