"""``hy.kv`` from tasks run by a real worker, and the deletion of expired keys: the cleanup
step driven on a connection, and a worker's upkeep running it."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import conninfo, sql

from hyrex_like import HyrexRegistry
from hyrex_like.db.kv import delete_expired
from hyrex_like.worker.kv_cleanup import KVCleanup

from .helpers import count, done, query, wait_until


def _kv_rows(database_url: str, schema: str) -> int:
    return count(database_url, schema, table="kv")


def _connect(database_url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


# ------------------------------------------------------------------ from a task, by a worker


def test_tasks_run_by_a_real_worker_use_hy_kv(app_registry, worker):
    from .apps import kv_app

    hy = app_registry(kv_app.hy)
    hy.kv.set("first", "taken")  # so no task wins the marker
    sync_handle = kv_app.remember.send(7)
    async_handle = kv_app.aremember.send(3)
    w = worker("kv_app:hy", "--processes", "1")
    assert done(sync_handle).status == "completed", sync_handle.task_runs
    assert sync_handle.result == {
        "read": {"n": 7, "tags": ["a", "b"]},
        "won": False,
        "missing": "dflt",
    }
    assert done(async_handle).status == "completed", async_handle.task_runs
    assert async_handle.result == {"read": [3, 6], "deleted": True, "after": "gone"}
    assert hy.kv.get("seen:7") == {"n": 7, "tags": ["a", "b"]}
    assert hy.kv.get("first") == "taken"
    assert w.stop() == 0


# ------------------------------------------------------------------ deleting expired keys


def _fill(database_url: str, schema: str, expired: int, live: int, future: int) -> None:
    query(
        database_url,
        schema,
        "INSERT INTO kv (key, value, expires_at) "
        "SELECT 'expired:' || i, to_jsonb(i), now() - interval '1 minute' "
        "FROM generate_series(1, %(expired)s) AS i "
        "UNION ALL SELECT 'live:' || i, to_jsonb(i), NULL FROM generate_series(1, %(live)s) AS i "
        "UNION ALL SELECT 'later:' || i, to_jsonb(i), now() + interval '1 hour' "
        "FROM generate_series(1, %(future)s) AS i",
        {"expired": expired, "live": live, "future": future},
    )


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = info


def test_the_cleanup_deletes_expired_keys_in_batches_then_rests(
    registry: HyrexRegistry, database_url: str, schema: str
):
    registry.migrate()
    _fill(database_url, schema, expired=1_203, live=5, future=7)
    now = [100.0]
    log = _Log()
    cleanup = KVCleanup(log, rest=30.0, batch=500, clock=lambda: now[0])
    with _connect(database_url, schema) as db:
        assert cleanup.run_once(db, now[0]) == 1_203  # the clock stands still: no budget cut
        assert _kv_rows(database_url, schema) == 12
        registry.kv.set("soon", 1, ttl=60)
        db.execute("UPDATE kv SET expires_at = now() - interval '1 s' WHERE key = 'soon'")
        assert cleanup.run_once(db, now[0] + 29) == 0  # resting
        assert _kv_rows(database_url, schema) == 13
        now[0] += 30
        assert cleanup.run_once(db, now[0]) == 1
        assert delete_expired(db) == 0
    assert log.events == [
        ("kv_expired_deleted", {"keys": 1_203}),
        ("kv_expired_deleted", {"keys": 1}),
    ]
    keys = {r[0].split(":")[0] for r in query(database_url, schema, "SELECT key FROM kv")}
    assert keys == {"live", "later"}


def test_the_cleanup_stops_at_its_budget(registry: HyrexRegistry, database_url: str, schema: str):
    registry.migrate()
    _fill(database_url, schema, expired=50, live=0, future=0)
    ticks = iter(range(1000))
    cleanup = KVCleanup(_Log(), budget=1.0, batch=10, clock=lambda: float(next(ticks)))
    with _connect(database_url, schema) as db:
        # clock 0: deadline 1; after one batch the clock reads 1: the pass ends
        assert cleanup.run_once(db, 0.0) == 10
        assert cleanup.resting_until == float("-inf")  # not done: the next pass goes on
        assert cleanup.run_once(db, 0.0) == 10
    assert _kv_rows(database_url, schema) == 30


def test_a_workers_upkeep_deletes_expired_keys(
    app_registry, worker, database_url: str, schema: str
):
    from .apps import kv_app

    hy = app_registry(kv_app.hy)
    hy.migrate()
    _fill(database_url, schema, expired=700, live=3, future=2)
    w = worker("kv_app:hy", "--processes", "1")
    wait_until(
        lambda: _kv_rows(database_url, schema) == 5, 30, what="the expired keys to be deleted"
    )
    assert "kv_expired_deleted" in w.log()
    assert w.stop() == 0


def test_a_cleanup_the_database_refuses_says_so_once_and_rests(
    registry: HyrexRegistry, database_url: str, schema: str
):
    """A worker role left out of the store's grants: the clean-up is refused, logs it, rests an
    hour (and raises nothing: the rescuer's pass goes on)."""
    registry.migrate()
    _fill(database_url, schema, expired=3, live=0, future=0)
    role = f"kv_noperm_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        admin.execute(
            sql.SQL("GRANT SELECT ON {}.kv TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    try:
        url = conninfo.make_conninfo(database_url, user=role)
        log = _Log()
        now = [100.0]
        cleanup = KVCleanup(log, clock=lambda: now[0])
        with _connect(url, schema) as db:
            assert cleanup.run_once(db, now[0]) == 0
            assert cleanup.run_once(db, now[0] + 60) == 0  # resting: not refused again
        assert [e[0] for e in log.events] == ["kv_cleanup_refused"]
        assert _kv_rows(database_url, schema) == 3
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
