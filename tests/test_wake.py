"""Waking workers: a pooled send wakes them after its commit, from the sender's waker thread
(sends close together share one NOTIFY); a send in the caller's transaction wakes them when
that transaction commits, and never if it rolls back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from hyrex_like import HyrexRegistry
from hyrex_like.config import Settings
from hyrex_like.db import Waker

from .helpers import count, query


def _listen(database_url: str, schema: str) -> psycopg.Connection:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier("hyrex_like_" + schema)))
    return conn


def _count(listener: psycopg.Connection, quiet: float) -> int:
    """Notifications that arrive until none has come for ``quiet`` seconds."""
    n = 0
    # (not stop_after=1 in a loop: psycopg drops the rest of a batch read together)
    while batch := list(listener.notifies(timeout=quiet)):
        n += len(batch)
    return n


def _registry(database_url: str, schema: str, **settings: object) -> HyrexRegistry:
    base = Settings.from_env(database_url=database_url, schema_name=schema)
    return HyrexRegistry(settings=base.model_copy(update=settings))


@pytest.fixture
def hy(database_url: str, schema: str) -> Iterator[HyrexRegistry]:
    registry = _registry(database_url, schema, wake_interval=0.05)
    registry.migrate()
    yield registry
    registry.close()


@pytest.fixture
def listener(hy: HyrexRegistry, database_url: str, schema: str) -> Iterator[psycopg.Connection]:
    conn = _listen(database_url, schema)
    yield conn
    conn.close()


def test_a_send_wakes_listeners_once_its_task_is_committed(hy, listener, database_url, schema):
    @hy.task
    def echo(n: int) -> None: ...

    handle = echo.send(1)
    assert list(listener.notifies(timeout=10, stop_after=1)), "no wake-up within 10 s"
    # the wake-up comes after the commit: a worker woken by it finds the task
    assert query(database_url, schema, "SELECT id FROM task") == [(handle.id,)]


def test_sends_close_together_share_wake_ups_and_the_last_is_covered(hy, listener):
    @hy.task
    def echo(n: int) -> None: ...

    started = time.monotonic()
    for n in range(100):
        echo.send(n)
    took = time.monotonic() - started
    got = _count(listener, quiet=1.0)
    # one at the start, then at most one per 50 ms and one after the sends: not one per send
    assert 1 <= got <= took / 0.05 + 2, (got, took)
    assert got < 100


def test_send_many_wakes_listeners(hy, listener):
    @hy.task
    def echo(n: int) -> None: ...

    echo.send_many(range(50))
    assert _count(listener, quiet=0.5) == 1


@pytest.mark.parametrize("many", [False, True], ids=["send", "send_many"])
def test_a_send_in_the_callers_transaction_wakes_at_its_commit_only(
    hy, listener, database_url, many
):
    @hy.task
    def echo(n: int) -> None: ...

    def send(conn: psycopg.Connection) -> None:
        if many:
            echo.send_many([1, 2], conn=conn)
        else:
            echo.send(1, conn=conn)

    with psycopg.connect(database_url) as conn:
        send(conn)
        assert _count(listener, quiet=0.3) == 0  # nothing before the commit
        conn.rollback()
        assert _count(listener, quiet=0.3) == 0  # nor for a rolled-back send
        send(conn)
        conn.commit()
        assert _count(listener, quiet=0.5) == 1


def test_a_wake_up_is_sent_again_on_a_new_connection_when_the_old_one_died(
    hy, listener, database_url
):
    @hy.task
    def echo(n: int) -> None: ...

    echo.send(1)
    assert _count(listener, quiet=0.3) == 1
    waker_pids = [
        pid
        for (pid,) in query(
            database_url,
            "public",
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'hyrex-like-waker'",
        )
    ]
    # (a registry another test left open may have a waker too: end them all, and wait until
    # they are gone, so the next NOTIFY cannot still go through the old connection)
    assert waker_pids
    with psycopg.connect(database_url, autocommit=True) as conn:
        for pid in waker_pids:
            assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone() == (
                True,
            )
    echo.send(2)
    assert _count(listener, quiet=0.5) == 1


def test_a_script_that_sends_and_exits_at_once_still_wakes_workers(database_url, schema, listener):
    # The second send's wake-up is due 1 s after the first: only the flush at exit sends it
    # before the script ends.
    script = (
        "from hyrex_like import HyrexRegistry\n"
        "hy = HyrexRegistry()\n"
        "@hy.task\n"
        "def echo(n: int) -> None: ...\n"
        "echo.send(1)\n"
        "import time; time.sleep(0.2)\n"
        "echo.send(2)\n"
    )
    env = os.environ | {
        "HYREX_LIKE_DATABASE_URL": database_url,
        "HYREX_LIKE_SCHEMA": schema,
        "HYREX_LIKE_WAKE_INTERVAL": "1",
    }
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - started < 30
    assert _count(listener, quiet=0.5) == 2


def test_a_statement_deallocated_under_the_pool_is_prepared_again(hy, database_url, schema):
    @hy.task
    def echo(n: int) -> None: ...

    echo.send(1)  # prepares the insert on the pool's connection
    pool = hy.store.pool()
    conn = pool.getconn()
    try:
        conn.execute("DEALLOCATE ALL")  # as a pooler or a DISCARD ALL would
    finally:
        pool.putconn(conn)
    echo.send(2)
    assert count(database_url, schema) == 2


def _thread_waker(database_url: str, schema: str) -> Waker:
    def connect() -> psycopg.Connection:
        return psycopg.connect(database_url, autocommit=True)

    def notify(conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_notify(%s, '')", ["hyrex_like_" + schema])

    return Waker(connect, notify, min_interval=0.0)


def test_every_commit_is_followed_by_a_notify_under_many_threads():
    # A NOTIFY covers the commits made before it starts: record, at the start of each, how
    # many commits there were; the last NOTIFY must come after the last commit.
    lock = threading.Lock()
    commits = 0
    seen: list[int] = []

    def notify(conn: object) -> None:
        with lock:
            seen.append(commits)
        time.sleep(0.001)  # a round trip, during which more commits come

    class Conn:
        def close(self) -> None: ...

    waker = Waker(Conn, notify, min_interval=0.002)  # type: ignore[arg-type]

    def sender() -> None:
        nonlocal commits
        for _ in range(500):
            with lock:
                commits += 1
            waker.wake()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 10
    while (not seen or seen[-1] != 2000) and time.monotonic() < deadline:
        time.sleep(0.01)
    waker.close(timeout=5)
    assert seen and seen[-1] == 2000, seen[-5:]
    assert len(seen) < 2000  # shared


def test_a_forked_child_sends_its_own_wake_ups(database_url, schema, listener):
    waker = _thread_waker(database_url, schema)
    waker.wake()  # the parent's thread is running
    assert _count(listener, quiet=0.3) == 1
    pid = os.fork()
    if pid == 0:  # the child: the inherited thread does not exist here
        code = 1
        try:
            waker.wake()
            waker.close(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _count(listener, quiet=0.5) == 1
    waker.close(timeout=5)
