"""The pools (sync and async) and their connections: `PooledConnection` adds the send fast
path, straight through libpq; an async pool can be closed from outside its event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ..config import Settings
from .queries import numbered

# Tasks closing an async pool from a sync close() on the pool's own loop (kept referenced
# until done, or the loop could drop them).
_closing: set[asyncio.Task[None]] = set()


class PooledConnection(psycopg.Connection[Any]):
    """A connection of the store's pool (and the waker's): adds `run_prepared`."""

    _hl_statements: frozenset[bytes] = frozenset()  # prepared by run_prepared

    def run_prepared(self, name: str, params: Mapping[str, Any]) -> None:
        """Run the named statement (no rows back) straight through libpq, prepared once per
        connection, with no cursor and no adapters (the cheap path for `send`). Values go as
        text: None, str, or anything whose ``str()`` PostgreSQL parses (int, float)."""
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


def open_pool(
    url: str, kwargs: dict[str, Any], settings: Settings
) -> ConnectionPool[PooledConnection]:
    """The sync pool, open (at least one connection made, or an error)."""
    pool: ConnectionPool[PooledConnection] = ConnectionPool(
        url,
        connection_class=PooledConnection,
        min_size=1,
        max_size=settings.pool_max_size,
        kwargs=kwargs,
        open=False,
        name="hyrex-like",
    )
    pool.open(wait=True, timeout=settings.connect_timeout + 5)
    return pool


async def open_apool(
    url: str, kwargs: dict[str, Any], settings: Settings
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """The async pool, open on the running event loop."""
    apool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=settings.pool_max_size,
        kwargs=kwargs,
        open=False,
        name="hyrex-like-async",
    )
    await apool.open(wait=True, timeout=settings.connect_timeout + 5)
    return apool


def close_apool(
    apool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    loop: asyncio.AbstractEventLoop,
    timeout: float,
) -> None:
    """Close ``apool``, which lives on ``loop``, from outside that loop without blocking it
    (waiting at most ``timeout`` s when it runs in another thread)."""
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
        future.result(timeout=timeout)
    elif running is None and not loop.is_closed():  # a stopped loop, from sync code
        loop.run_until_complete(apool.close())
    else:
        # The loop is gone (with the pool's tasks), or stopped while this thread runs another:
        # nothing can await the close, so close the idle connections' sockets directly (kept
        # in psycopg_pool's `_pool`; one out on loan died with its task or waits on that loop).
        for conn in list(getattr(apool, "_pool", ())):
            conn.pgconn.finish()
        if not loop.is_closed():  # its workers stop if that loop ever runs again
            task = loop.create_task(apool.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
