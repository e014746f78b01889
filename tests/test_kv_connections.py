"""The key-value store on connections that are not the library's: a caller's connection with
its own row factory and search_path, and pooled connections the server killed."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from hyrex_like import DatabaseError, HyrexRegistry


def _terminate_pool(database_url: str, hy: HyrexRegistry) -> None:
    """Kill every connection of the registry's sync pool (as a server restart would)."""
    pool = hy.store.pool()
    conns = [pool.getconn() for _ in range(hy.settings.pool_max_size)]
    pids = [c.info.backend_pid for c in conns]
    for c in conns:
        pool.putconn(c)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        for _ in range(500):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if row == (0,):
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("backends still alive")


def test_a_callers_connection_with_a_dict_row_factory(
    registry: HyrexRegistry, database_url: str
) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        registry.kv.set("d", {"x": 1}, conn=conn)
        assert registry.kv.get("d", conn=conn) == {"x": 1}
        assert registry.kv.set_if_absent("d", 2, conn=conn) is False
        assert registry.kv.delete("d", conn=conn) is True


def test_async_callers_connection_with_a_dict_row_factory(
    registry: HyrexRegistry, database_url: str
) -> None:
    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(
            database_url, row_factory=dict_row
        ) as conn:
            await registry.kv.aset("d", [1], conn=conn)
            return await registry.kv.aget("d", conn=conn)

    assert asyncio.run(main()) == [1]


def test_the_callers_search_path_is_put_back_even_when_a_call_fails(
    registry: HyrexRegistry, database_url: str
) -> None:
    registry.migrate()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET search_path = public")
        conn.execute("SET default_transaction_read_only = on")  # our write will be refused
        with pytest.raises(DatabaseError, match="read-only"):
            registry.kv.set("k", 1, conn=conn)
        conn.execute("SET default_transaction_read_only = off")
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


def test_after_a_restart_reads_and_sets_retry_and_the_others_fail_once(
    registry: HyrexRegistry, database_url: str
) -> None:
    registry.kv.set("k", 1)
    _terminate_pool(database_url, registry)
    assert registry.kv.get("k") == 1  # retried on a fresh connection
    _terminate_pool(database_url, registry)
    registry.kv.set("k", 2)
    _terminate_pool(database_url, registry)
    with pytest.raises(DatabaseError):
        registry.kv.delete("k")  # not retried: a committed first try would answer wrongly
    # ...but the dead connections were dropped: the next call works at once
    assert registry.kv.delete("k") is True
