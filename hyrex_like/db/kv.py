"""The key-value store's statements (`hyrex_like.kv` checks keys and values first): on a pooled
connection, or on a caller's in its transaction (`sends._in_schema`).

A read or a plain set on a pooled connection that turns out dead is tried once more on a fresh
one, as a send is: both give the same outcome when run twice. A delete or a set_if_absent is
not retried: had the first try committed before its connection died, the second would report
"nothing deleted" or "lost the race", which is false. Those raise `DatabaseError` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from .errors import _translate
from .queries import q
from .reads import read_on_pool
from .sends import _ain_schema, _in_schema

if TYPE_CHECKING:
    from .client import Store

T = TypeVar("T")

KV_CLEANUP_BATCH = 500
"""Expired keys deleted per statement by the worker's upkeep (`delete_expired`)."""


# -- what each call does with its one statement's rows ------------------------------------


def _get(rows: list[tuple[Any, ...]], default: Any) -> Any:
    return rows[0][0] if rows else default


def _flag(rows: list[tuple[Any, ...]], default: Any) -> bool:
    return bool(rows and rows[0][0])


def _none(rows: list[tuple[Any, ...]], default: Any) -> None:
    return None


_CALLS: dict[str, tuple[Callable[[list[tuple[Any, ...]], Any], Any], bool]] = {
    # statement: (what its rows mean, whether a try on a dead connection is repeated)
    "kv_get": (_get, True),
    "kv_set": (_none, True),
    "kv_delete": (_flag, False),
    "kv_set_if_absent": (_flag, False),
}


def _rows(cur: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
    return cur.fetchall() if cur.description else []


def run(
    store: Store,
    name: LiteralString,
    params: Mapping[str, Any],
    conn: psycopg.Connection[Any] | None,
    what: str,
    default: Any = None,
) -> Any:
    """Run the kv statement ``name`` on ``conn`` (in the caller's transaction) or on a pooled
    connection; its outcome as `_CALLS` reads it. Errors come out as `DatabaseError` naming
    ``what``."""
    outcome, repeatable = _CALLS[name]

    def once(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return _rows(c.execute(q(name), params, prepare=True))

    try:
        if conn is not None:
            with _in_schema(store, conn) as cur:
                return outcome(_rows(cur.execute(q(name), params)), default)
        if repeatable:
            return outcome(read_on_pool(store.pool(), once, what), default)
        pool = store.pool()
        with pool.connection() as c:
            try:
                return outcome(once(c), default)
            except psycopg.Error:
                if c.broken:
                    pool.check()  # (the next calls get live connections, not the dead ones)
                raise
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc


async def arun(
    store: Store,
    name: LiteralString,
    params: Mapping[str, Any],
    conn: psycopg.AsyncConnection[Any] | None,
    what: str,
    default: Any = None,
) -> Any:
    """`run` from async code: on ``conn`` (an `AsyncConnection`) or the async pool."""
    outcome, repeatable = _CALLS[name]

    async def once(c: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cur = await c.execute(q(name), params, prepare=True)
        return await cur.fetchall() if cur.description else []

    try:
        if conn is not None:
            async with _ain_schema(store, conn) as cur:
                await cur.execute(q(name), params)
                return outcome(await cur.fetchall() if cur.description else [], default)
        pool = await store.apool()
        return outcome(await _aon_pool(pool, once, repeatable), default)
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc


async def _aon_pool(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    once: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    repeatable: bool,
) -> T:
    """``once`` on a connection of the async pool; if ``repeatable`` and that connection
    turns out dead, once more on a fresh one (`read_on_pool`'s rule)."""
    async with pool.connection() as c:
        try:
            return await once(c)
        except psycopg.Error:
            if not c.broken:
                raise
            if not repeatable:
                await pool.check()  # (the next calls get live connections, not the dead ones)
                raise
    await pool.check()
    async with pool.connection() as c:
        return await once(c)


def delete_expired(conn: psycopg.Connection[Any], batch: int = KV_CLEANUP_BATCH) -> int:
    """Delete up to ``batch`` expired keys on ``conn`` (autocommit, our schema's search_path):
    the keys deleted. psycopg errors propagate (the worker's upkeep handles them)."""
    cur = conn.execute(q("kv_delete_expired"), {"batch": batch}, prepare=True)
    return max(cur.rowcount, 0)
