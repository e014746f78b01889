"""Heartbeat and rescue off the dispatch loop: their own thread and connection, one elected
rescuer per schema, tests that wait for "the rescuer ran" (an observer event), not for time."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hyrex_like import HyrexRegistry
from hyrex_like.config import WorkerOptions
from hyrex_like.db import WorkerQueries
from hyrex_like.logs import get_logger
from hyrex_like.observer import RecordingObserver, WorkerObserver
from hyrex_like.states import RunStatus
from hyrex_like.worker.maintenance import Maintenance

from .helpers import query, wait_until


def _connect(database_url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


@pytest.fixture
def upkeep(registry: HyrexRegistry, database_url: str, schema: str) -> Iterator[Any]:
    """Make `Maintenance` services for made-up workers of this schema (registered)."""
    registry.migrate()
    made: list[Maintenance] = []

    def make(observer: WorkerObserver, clock: Any = None, **options: Any) -> Maintenance:
        worker_id = uuid.uuid4()

        def register(db: psycopg.Connection[Any]) -> None:
            WorkerQueries.register(db, worker_id, "test", 1, [], ["t"], 1)

        with _connect(database_url, schema) as db:
            register(db)
        extra = {"clock": clock} if clock else {}
        m = Maintenance(
            lambda: _connect(database_url, schema),
            register,
            WorkerOptions(**options),
            worker_id,
            get_logger("tests.maintenance"),
            observer=observer,
            **extra,
        )
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def _stale_worker_holding_a_task(database_url: str, schema: str) -> uuid.UUID:
    """A worker whose heartbeat is an hour old, holding one running task (its run open)."""
    dead, task = uuid.uuid4(), uuid.uuid4()
    with _connect(database_url, schema) as db:
        WorkerQueries.register(db, dead, "gone", 2, [], ["t"], 1)
        db.execute(
            "UPDATE worker SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (dead,)
        )
        db.execute(
            "INSERT INTO task (id, task_name, queue, args, status, attempt_count, worker_id)"
            " VALUES (%s, 't', 'default', '{}', 'running', 1, %s)",
            (task, dead),
        )
        db.execute(
            "INSERT INTO task_run (task_id, attempt_number, status, worker_id)"
            " VALUES (%s, 1, 'running', %s)",
            (task, dead),
        )
    return task


def test_one_worker_per_schema_rescues_and_another_takes_over_when_it_goes(
    upkeep, database_url, schema
):
    first, second = RecordingObserver(), RecordingObserver()
    a, b = upkeep(first), upkeep(second)
    a.run_once()
    b.run_once()
    assert (a.leader, b.leader) == (True, False)
    # the server itself watches the rescuer's client: a vanished host frees the lock in ~30 s
    assert a.db.execute("SHOW tcp_keepalives_idle").fetchone() in (("10",), ("10s",))
    assert first.counts["rescued"] == 1 and second.counts["rescued"] == 0
    assert second.last["maintenance_skipped"] == ("not_leader",)
    assert first.last["heartbeat"] == (True,) and second.last["heartbeat"] == (True,)

    task = _stale_worker_holding_a_task(database_url, schema)
    b.run_once()  # not the rescuer: the dead worker's task stays where it is
    assert query(database_url, schema, "SELECT status FROM task WHERE id = %s", (task,)) == [
        ("running",)
    ]
    a.close()  # its connection ends, and with it the lock
    b.run_once()
    assert b.leader and second.last["rescued"] == (1, 1)
    assert query(database_url, schema, "SELECT status FROM task WHERE id = %s", (task,)) == [
        ("queued",)
    ]


def test_the_full_rescue_runs_when_the_injected_clock_says_it_is_due(upkeep, database_url, schema):
    """A running task whose worker row is gone is found only by the full scan, made every
    stale_after seconds by the clock the service is given."""
    now = [1000.0]
    events = RecordingObserver()
    m = upkeep(events, clock=lambda: now[0], stale_after=60, heartbeat_interval=1)
    m.run_once()  # the first pass is a full one
    task = _stale_worker_holding_a_task(database_url, schema)
    with _connect(database_url, schema) as db:  # its worker row is gone: not a stale heartbeat
        db.execute("DELETE FROM worker WHERE hostname = 'gone'")
    now[0] += 30
    m.run_once()
    assert query(database_url, schema, "SELECT status FROM task WHERE id = %s", (task,)) == [
        ("running",)
    ]
    now[0] += 31  # stale_after since the last full scan
    m.run_once()
    assert events.last["rescued"] == (0, 1)
    assert query(database_url, schema, "SELECT status FROM task WHERE id = %s", (task,)) == [
        ("queued",)
    ]


def test_a_pass_that_loses_its_database_reconnects_at_the_next(upkeep, database_url, schema):
    events = RecordingObserver()
    m = upkeep(events)
    m.run_once()
    assert m.leader
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (m.db.info.backend_pid,))
    m.run_once()
    assert events.last["maintenance_skipped"] == ("database",) and not m.leader
    m.run_once()
    assert m.leader and events.counts["rescued"] == 2


def test_a_worker_beats_on_its_own_thread_and_dispatches_while_its_heartbeat_is_blocked(
    app_registry, database_url, schema
):
    """The worker row locked by another session blocks every heartbeat; tasks still run and
    their results are written, and a timeout is still enforced: upkeep never holds up the loop."""
    from .apps import basic_app

    hy = app_registry(basic_app.hy)
    hy.migrate()
    events = RecordingObserver()
    w = hy.worker(processes=1, heartbeat_interval=0.2, stale_after=30, observer=events)
    w.start()
    try:
        events.wait_for("heartbeat", 2, timeout=60)
        [(worker_id,)] = query(database_url, schema, "SELECT id FROM worker")
        with psycopg.connect(database_url) as blocker:  # a transaction holds the row lock
            blocker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            blocker.execute("SELECT 1 FROM worker WHERE id = %s FOR UPDATE", (worker_id,))
            beats = events.counts["heartbeat"]
            handles = [basic_app.echo.send({"n": i}) for i in range(20)]
            for h in handles:
                assert h.wait(timeout=60).result["n"] in range(20)
            assert events.counts["heartbeat"] <= beats + 1  # stuck behind the lock
            blocker.rollback()
        events.wait_for("heartbeat", beats + 2, timeout=30)
    finally:
        w.stop()
        assert w.join(60) == 0


def test_a_failing_observer_is_logged_once_and_never_stops_the_worker(app_registry, caplog):
    from .apps import basic_app

    class Broken(WorkerObserver):
        def heartbeat(self, alive: bool) -> None:
            calls.append(alive)
            raise RuntimeError("observer bug")

    calls: list[bool] = []
    hy = app_registry(basic_app.hy)
    hy.migrate()
    with hy.worker(processes=1, heartbeat_interval=0.1, stale_after=30, observer=Broken()):
        assert basic_app.echo.send({"n": 7}).wait(timeout=60).result["n"] == 7
        wait_until(lambda: len(calls) >= 3, 30, what="three heartbeats")
    failed = [r for r in caplog.records if "observer_failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]


def test_recording_observer_waits_for_an_event_and_times_out_naming_it():
    events = RecordingObserver()
    threading.Timer(0.05, events.rescued, (0, 3)).start()
    assert events.wait_for("rescued", 1, timeout=10, where=lambda args: args[1] == 3) == (0, 3)
    with pytest.raises(TimeoutError, match="'heartbeat'"):
        events.wait_for("heartbeat", 1, timeout=0.05)


def test_an_unexpected_database_error_is_logged_and_the_next_pass_runs_again(
    upkeep, database_url, schema
):
    """Not a lost connection (the worker table is gone): the pass says so, the thread lives on."""
    events = RecordingObserver()
    m = upkeep(events)
    m.run_once()
    with _connect(database_url, schema) as db:
        db.execute("ALTER TABLE worker RENAME TO worker_away")
    m.run_once()  # raises nothing
    assert events.last["maintenance_skipped"] == ("error",)
    with _connect(database_url, schema) as db:
        db.execute("ALTER TABLE worker_away RENAME TO worker")
    m.run_once()
    assert events.counts["heartbeat"] == 2


def _minutes(database_url: str, schema: str, worker_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        schema,
        "SELECT queue::text, status, attempts FROM queue_minute WHERE worker_id = %s"
        " ORDER BY status",
        (worker_id,),
    )


def test_a_role_that_may_not_write_tallies_still_cancels_and_rescues_and_writes_them_later(
    registry, database_url, schema, caplog
):
    """The tally upsert is refused (no grant on queue_minute): the beat still hands over the
    cancels it found, the rescuer still requeues (and counts the attempt it closed as lost);
    once the grant is back the counts kept in memory are written, once."""
    registry.migrate()
    role = "hl_no_tally_" + uuid.uuid4().hex[:8]
    with _connect(database_url, schema) as admin:
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
        admin.execute(f"REVOKE ALL ON queue_minute FROM {role}")
    worker_id = uuid.uuid4()

    def connect() -> psycopg.Connection[Any]:
        conn = _connect(database_url, schema)
        conn.execute(f"SET ROLE {role}")
        return conn

    def register(db: psycopg.Connection[Any]) -> None:
        WorkerQueries.register(db, worker_id, "test", 1, [], ["t"], 1)

    canceled: list[list[uuid.UUID]] = []
    events = RecordingObserver()
    m = Maintenance(
        connect,
        register,
        WorkerOptions(),
        worker_id,
        get_logger("tests.maintenance"),
        observer=events,
        on_cancel=canceled.append,
    )
    try:
        with _connect(database_url, schema) as db:
            register(db)
            mine = uuid.uuid4()
            db.execute(
                "INSERT INTO task (id, task_name, queue, args, status, attempt_count, worker_id,"
                " cancel_requested_at) VALUES (%s, 't', 'default', '{}', 'running', 1, %s, now())",
                (mine, worker_id),
            )
        lost = _stale_worker_holding_a_task(database_url, schema)
        query(
            database_url,
            schema,
            "UPDATE task_run SET started_at = now() WHERE task_id = %s",
            (lost,),
        )
        m.tally.put_back({(int(time.time() // 60), "default", str(RunStatus.COMPLETED)): [3, 1.5]})
        m.run_once()
        assert canceled == [[mine]]
        assert m.leader and events.last["rescued"] == (1, 1)
        assert "maintenance_skipped" not in events.last
        assert query(database_url, schema, "SELECT status FROM task WHERE id = %s", (lost,)) == [
            ("queued",)
        ]
        assert _minutes(database_url, schema, worker_id) == []
        m.run_once()  # refused again: still kept, and not logged again
        refused = [r for r in caplog.records if "tallies_not_written" in r.getMessage()]
        assert len(refused) == 1 and "queue_minute" in refused[0].getMessage()
        with _connect(database_url, schema) as admin:
            admin.execute(f"GRANT ALL ON queue_minute TO {role}")
        m.run_once()
        m.run_once()
        assert _minutes(database_url, schema, worker_id) == [
            ("default", str(RunStatus.COMPLETED), 3),
            ("default", str(RunStatus.LOST), 1),
        ]
    finally:
        m.stop()
        with _connect(database_url, schema) as admin:
            admin.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
            admin.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}')
            admin.execute(f"DROP ROLE {role}")
