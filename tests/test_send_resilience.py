"""Sends ride out a database restart: a pooled connection found dead is replaced and the send
tried once more, without ever writing a task twice. Backends are really terminated
(``pg_terminate_backend``), only those of the registry under test: other tests share the server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hyrex_like import DatabaseError, HyrexRegistry, Settings, step
from hyrex_like.db import pools as store_module

from .helpers import TcpProxy, count, query


@pytest.fixture
def hy(database_url: str, schema: str) -> Iterator[HyrexRegistry]:
    registry = HyrexRegistry(database_url, schema=schema)

    @registry.task
    def echo(n: int) -> int:
        return n

    yield registry
    registry.close()


def _fill_pool(hy: HyrexRegistry) -> list[int]:
    """Open every connection the sync pool may hold; returns their backend pids."""
    pool = hy.store.pool()
    conns = [pool.getconn() for _ in range(hy.settings.pool_max_size)]
    pids = [c.info.backend_pid for c in conns]
    for c in conns:
        pool.putconn(c)
    return pids


async def _fill_apool(hy: HyrexRegistry) -> list[int]:
    apool = await hy.store.apool()
    conns = [await apool.getconn() for _ in range(hy.settings.pool_max_size)]
    pids = [c.info.backend_pid for c in conns]
    for c in conns:
        await apool.putconn(c)
    return pids


def _terminate(database_url: str, pids: list[int]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
            (pids,),
        ).fetchall()
        assert sorted(r[0] for r in rows) == sorted(pids) and all(r[1] for r in rows)
        # pg_terminate_backend only signals: wait until the backends are gone
        for _ in range(500):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if left == (0,):
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"backends {pids} still alive")


def _ids_once(database_url: str, schema: str, ids: list[Any]) -> None:
    rows = query(database_url, schema, "SELECT id, count(*) FROM task GROUP BY id")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == 1 for r in rows)


def test_send_after_every_pooled_backend_was_terminated_succeeds_once_each(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]
    first = echo.send(0)
    pids = _fill_pool(hy)
    assert len(set(pids)) == hy.settings.pool_max_size
    _terminate(database_url, pids)
    handles = [echo.send(i) for i in range(1, 21)]
    _ids_once(database_url, schema, [first.id] + [h.id for h in handles])
    # the dead connections were found (and dropped) by the retry, not by luck
    assert hy.store.pool().get_stats().get("connections_lost", 0) >= 1


def test_send_many_after_every_pooled_backend_was_terminated_succeeds_once(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]
    echo.send(0)
    _terminate(database_url, _fill_pool(hy))
    handles = [h for i in range(20) for h in echo.send_many([10 * i + k for k in range(3)])]
    assert count(database_url, schema) == 61
    _ids_once(database_url, schema, [h.id for h in handles] + [_first_id(database_url, schema)])
    assert hy.store.pool().get_stats().get("connections_lost", 0) >= 1


def _first_id(database_url: str, schema: str) -> Any:
    return query(database_url, schema, "SELECT id FROM task WHERE args = '0'::jsonb")[0][0]


def test_asend_after_every_pooled_backend_was_terminated_succeeds_once_each(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]

    async def scenario() -> tuple[list[Any], dict[str, int]]:
        await echo.asend(0)
        _terminate(database_url, await _fill_apool(hy))
        handles = [await echo.asend(i) for i in range(1, 21)]
        stats = (await hy.store.apool()).get_stats()
        await hy.aclose()
        return [h.id for h in handles], stats

    ids, stats = asyncio.run(scenario())
    assert count(database_url, schema) == 21
    _ids_once(database_url, schema, ids + [_first_id(database_url, schema)])
    assert stats.get("connections_lost", 0) >= 1


def test_send_is_not_retried_on_the_callers_connection(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]
    hy.migrate()
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT 1")
        _terminate(database_url, [conn.info.backend_pid])
        with pytest.raises(DatabaseError):
            echo.send(1, conn=conn)
    assert count(database_url, schema) == 0


def test_a_send_that_committed_before_its_connection_died_is_not_written_twice(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    """The retry of a send that had committed finds its own row (same id) and succeeds."""
    echo = hy.tasks["echo"]
    echo.send(0)
    new = echo._new_task(1, [])
    hy.store.insert_task(new)
    # replay the retry path itself: the row is there, so the duplicate key means "done"
    lost = psycopg.OperationalError("the connection was lost")
    hy.store._send_again(lambda c: c.run_prepared("insert_task", new.params()), "test", lost)
    assert count(database_url, schema, f"id = '{new.id}'") == 1


def test_after_close_a_recreated_schema_is_migrated_again(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]
    echo.send(1)
    hy.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    handle = echo.send(2)  # auto-migrate runs again instead of SchemaNotReady
    assert count(database_url, schema) == 1
    assert handle.refresh().status == "queued"


def test_close_closes_the_async_pool_too(hy: HyrexRegistry, database_url: str) -> None:
    echo = hy.tasks["echo"]

    async def send_async() -> list[int]:
        await echo.asend(1)
        return await _fill_apool(hy)

    pids = asyncio.run(send_async())  # the loop the pool lived on is gone now
    assert _alive(database_url, pids) == len(pids)
    hy.close()
    assert hy.store.idle()
    assert _wait_gone(database_url, pids)


def test_asend_on_a_new_event_loop_opens_a_new_async_pool(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    echo = hy.tasks["echo"]
    asyncio.run(echo.asend(0))

    async def on_a_new_loop() -> None:
        # Needs the pool to grow: a pool left on the first loop (whose tasks died with it)
        # could not open a connection and would wait out its timeout.
        await asyncio.wait_for(_fill_apool(hy), 10)
        await asyncio.gather(*(echo.asend(n) for n in range(1, 9)))
        await hy.aclose()

    asyncio.run(on_a_new_loop())
    assert count(database_url, schema) == 9


def test_asend_and_aclose_after_a_loop_that_stopped_without_closing(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    """A pool left on a loop that is neither running nor closed (``loop.run_until_complete``
    done with, the loop kept) is dropped from a new loop without running the old one, which
    asyncio forbids while another loop runs: its connections are closed directly."""
    echo = hy.tasks["echo"]
    old = asyncio.new_event_loop()
    try:
        old.run_until_complete(echo.asend(1))
        pids = old.run_until_complete(_fill_apool(hy))
        asyncio.run(echo.asend(2))
        assert _wait_gone(database_url, pids)

        old.run_until_complete(echo.asend(3))  # a pool on the old loop again, stopped again
        pids = old.run_until_complete(_fill_apool(hy))
        asyncio.run(hy.aclose())
        assert hy.store.idle()
        assert _wait_gone(database_url, pids)
        # each old pool's own close waits for the old loop to run again: the first one's ran
        # with asend(3); the second runs now, and stops that pool's workers
        closing = [t for t in store_module._closing if t.get_loop() is old]
        assert len(closing) == 1
        old.run_until_complete(asyncio.gather(*closing))
        assert not [t for t in store_module._closing if t.get_loop() is old]
    finally:
        old.close()
    assert count(database_url, schema) == 3


class _Proxy(TcpProxy):
    """`TcpProxy` whose ``down()`` refuses the very next connection too: closing a listening
    socket does not wake a thread blocked in its ``accept()``, which keeps it listening and
    lets one more connection through; shutting it down first does."""

    def down(self) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().down()


def _unreachable_after_one_send(
    database_url: str, schema: str
) -> tuple[_Proxy, HyrexRegistry, Settings]:
    """A registry whose pooled connections go through a proxy that is then taken down: the
    next send finds its connection dead and retries while the server stays unreachable."""
    proxy = _Proxy(database_url)
    proxy.up()
    # One connection: a pool that may grow opens another in the background after a send,
    # which could slip past down() while the proxy is still connecting it.
    settings = Settings.from_env(
        database_url=proxy.url, schema_name=schema, connect_timeout=1.0, pool_max_size=1
    )
    registry = HyrexRegistry(settings=settings)

    @registry.task
    def echo(n: int) -> int:
        return n

    return proxy, registry, settings


@pytest.mark.parametrize("how", ["send", "send_many", "asend"])
def test_a_send_retried_while_the_server_is_unreachable_fails_within_connect_timeout(
    database_url: str, schema: str, how: str
) -> None:
    proxy, registry, settings = _unreachable_after_one_send(database_url, schema)
    echo = registry.tasks["echo"]

    def send_twice() -> tuple[BaseException | None, float]:
        echo.send_many([1]) if how == "send_many" else echo.send(1)
        proxy.down()
        started = time.monotonic()
        try:
            echo.send_many([2]) if how == "send_many" else echo.send(2)
        except DatabaseError as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    async def asend_twice() -> tuple[BaseException | None, float]:
        await echo.asend(1)
        proxy.down()
        started = time.monotonic()
        try:
            await echo.asend(2)
        except DatabaseError as exc:
            return exc, time.monotonic() - started
        finally:
            await registry.aclose()
        return None, time.monotonic() - started

    try:
        error, elapsed = asyncio.run(asend_twice()) if how == "asend" else send_twice()
    finally:
        proxy.down()
        registry.close()
    assert isinstance(error, DatabaseError), error
    what = "sending 1 tasks" if how == "send_many" else "sending task 'echo'"
    assert elapsed < settings.connect_timeout + 5, elapsed  # not the pool's 30 s default
    message = str(error)
    assert f"{what} failed" in message, message
    assert "retried once" in message and "connect_timeout" in message, message
    first = error.__cause__
    assert isinstance(first, psycopg.Error), repr(first)  # the original failure
    assert f"connection was lost ({type(first).__name__}: {str(first).strip()})" in message
    assert count(database_url, schema) == 1


def test_registry_is_a_context_manager_sync_and_async(database_url: str, schema: str) -> None:
    with HyrexRegistry(database_url, schema=schema) as hy:

        @hy.task
        def ping(n: int) -> int:
            return n

        ping.send(1)
        assert not hy.store.idle()
    assert hy.store.idle()

    async def use() -> HyrexRegistry:
        async with HyrexRegistry(database_url, schema=schema) as ahy:

            @ahy.task
            def pong(n: int) -> int:
                return n

            await pong.asend(1)
            pong.send(2)
            assert not ahy.store.idle()
        return ahy

    ahy = asyncio.run(use())
    assert ahy.store.idle()
    assert count(database_url, schema) == 3


def _alive(database_url: str, pids: list[int]) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_gone(database_url: str, pids: list[int]) -> bool:
    from .helpers import wait_until

    return bool(wait_until(lambda: _alive(database_url, pids) == 0, 10, what="backends to go"))


def test_reads_and_workflow_sends_after_every_pooled_backend_was_terminated(
    hy: HyrexRegistry, database_url: str, schema: str
) -> None:
    """A read (a handle's refresh, a workflow's) and a workflow's send on a pooled connection
    found dead are tried once more on a fresh one, as a task's send is."""
    echo = hy.tasks["echo"]
    wf = hy.workflow("echo_twice", [echo, step("again", echo.with_config(queue="other"))])
    handle = echo.send(1)
    run = wf.send(2)
    for read in (
        lambda: handle.refresh().status,
        lambda: run.refresh().status,
        lambda: hy.list_workflows(),
        lambda: hy.get_workflow(run.id).name,
        lambda: wf.send(3).id,
    ):
        _terminate(database_url, _fill_pool(hy))
        read()
    assert count(database_url, schema, "true", table="workflow") == 2
