"""Exactly once per tick, cluster-wide (#15): every worker runs a scheduler (the default), and
they race on each tick; the tick's row and its task are written by one statement under the
(schedule, tick time) key, so a tick yields one task, never two, never a tick without its task.

The proof with real workers: three of them, an ``every(1 s)`` schedule for ~30 s, one worker
SIGKILLed midway (and restarted: its new scheduler resumes from the ticks recorded), then every
worker's database connections terminated at once. Then: one task per tick (from the database
and from what the bodies recorded), none missing between the first tick and the last.

And a daily schedule across frequent restarts, with an injected clock: a scheduler started
anew several times a day, never at midnight, still fires once a day (River's long intervals
that never fired when workers restarted more often than the interval).
"""

from __future__ import annotations

import collections
import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql

from .helpers import backend_pids_of, query, terminate_backends, wait_until
from .test_scheduled_for import read_ticks

WORKER_ARGS = ("--processes", "1", "--heartbeat-interval", "0.5", "--stale-after", "3")
RUN_SECONDS = 30


def _ticks(database_url: str, schema: str) -> list[tuple[datetime, uuid.UUID]]:
    return [
        (r[0], r[1])
        for r in query(
            database_url,
            schema,
            "SELECT tick_at, task_id FROM schedule_tick WHERE schedule_name = 'tick' "
            "ORDER BY tick_at",
        )
    ]


def _fired_late(database_url: str, schema: str) -> str:
    """For a failure message: how long after its time each tick was recorded (a tick every
    scheduler fired a grace late or more is merged into the next by catch_up="latest")."""
    rows = query(
        database_url,
        schema,
        "SELECT tick_at, round(extract(epoch FROM created_at - tick_at)::numeric, 3) "
        "FROM schedule_tick ORDER BY 1",
    )
    return "recorded after (s): " + ", ".join(f"{t:%H:%M:%S} +{late}" for t, late in rows)


def _connect(database_url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def _reconnected(database_url: str, pid: int, old: list[int]) -> bool:
    """A worker holds connections again, none of the terminated ones."""
    now = backend_pids_of(database_url, pid)
    return bool(now) and not set(now) & set(old)


@pytest.mark.slow
def test_three_schedulers_make_exactly_one_task_per_tick_through_a_kill_and_lost_connections(
    app_registry, worker, out_dir, database_url, schema
):
    from .apps import every_second_app as app

    app_registry(app.hy).migrate()  # the tables exist before the workers race to make them
    env = {"HYREX_TEST_OUT": str(out_dir)}
    workers = [worker("every_second_app:hy", *WORKER_ARGS, env=env) for _ in range(3)]
    first = wait_until(lambda: _ticks(database_url, schema), 60, what="the first tick")[0][0]
    end = first + timedelta(seconds=RUN_SECONDS)

    # Midway: SIGKILL one worker (scheduler, claimer and all) and start it again once a few
    # ticks went by without it (its new scheduler resumes after the newest tick recorded).
    wait_until(lambda: _ticks(database_url, schema)[-1][0] >= first + timedelta(seconds=8), 60)
    workers[0].signal(signal.SIGKILL)
    workers[0].proc.wait(10)
    killed_at = _ticks(database_url, schema)[-1][0]
    wait_until(lambda: _ticks(database_url, schema)[-1][0] >= killed_at + timedelta(seconds=3), 30)
    workers.append(worker("every_second_app:hy", *WORKER_ARGS, env=env))
    wait_until(lambda: backend_pids_of(database_url, workers[3].pid), 30, what="it to connect")
    # Then cut every live worker's database connections at once (a failover, a pooler
    # restart): each scheduler finds its connection gone at the next tick and does the pass
    # again at once on a fresh one, so no tick may go missing.
    live = workers[1:]
    old = {w.pid: wait_until(lambda w=w: backend_pids_of(database_url, w.pid), 20) for w in live}
    assert terminate_backends(database_url, [pid for pids in old.values() for pid in pids]) >= 3
    for w in live:
        wait_until(
            lambda w=w: _reconnected(database_url, w.pid, old[w.pid]),
            30,
            what="the worker and its scheduler to reconnect",
        )

    # Run to the end, and until every tick up to it ran (the killed worker's claimed tasks are
    # requeued by the others once it is stale).
    def all_ran() -> bool:
        rows = query(
            database_url,
            schema,
            "SELECT count(*) FILTER (WHERE status <> 'completed'), max(scheduled_for) "
            "FROM task WHERE task_name = 'tick' AND scheduled_for <= %s",
            (end,),
        )
        left, newest = rows[0]
        return left == 0 and newest == end

    wait_until(all_ran, RUN_SECONDS + 90, interval=0.2, what="every tick to the end to run")
    for w in workers[1:]:
        assert w.stop() == 0

    # The database: one schedule_tick row per tick, each with its task, one task per tick.
    ticks = _ticks(database_url, schema)
    times = [t for t, _ in ticks]
    assert times == sorted(set(times))
    gaps = [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a != timedelta(seconds=1)]
    assert gaps == [], f"ticks missing between {gaps}; {_fired_late(database_url, schema)}"
    assert times[0] == first and times[-1] >= end
    tasks = query(
        database_url,
        schema,
        "SELECT id, scheduled_for, status, attempt_count FROM task WHERE task_name = 'tick'",
    )
    assert sorted((r[1], r[0]) for r in tasks) == sorted(ticks), "a tick without its task"
    per_tick = collections.Counter(r[1] for r in tasks)
    assert [t for t, n in per_tick.items() if n > 1] == []

    # The bodies: every tick up to the end ran, as its one task, seeing its own tick time.
    attempts = {r[0]: r[3] for r in tasks}
    task_of = {t.timestamp(): task_id for t, task_id in ticks}
    ran: dict[float, set[str]] = collections.defaultdict(set)
    runs = collections.Counter()
    for row in read_ticks(out_dir, "tick"):
        ran[row["scheduled_for"]].add(row["task_id"])
        runs[row["task_id"]] += 1
        assert row["started"] >= row["scheduled_for"]
    expected = [t.timestamp() for t in times if t <= end]
    assert [t for t in expected if t not in ran] == [], "ticks whose task never ran"
    for at, ids in ran.items():
        assert ids == {str(task_of[at])}, f"tick {at}: bodies of {ids}"
    # A body runs twice only as a new attempt of its task (the killed worker's, requeued).
    assert [t for t, n in runs.items() if n > attempts[uuid.UUID(t)]] == []
    print(f"{len(times)} ticks, {sum(runs.values())} bodies, {len(workers)} worker processes")


def _lives(start: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """A scheduler's lives over ``days``: 3 h 7 min up, 20 min down (a restart), repeated, so
    restarts drift across the day and some fall across midnight."""
    lives, at = [], start
    while at < start + timedelta(days=days):
        lives.append((at, at + timedelta(hours=3, minutes=7)))
        at += timedelta(hours=3, minutes=27)
    return lives


def _passes(life: tuple[datetime, datetime]) -> list[datetime]:
    """When a scheduler living ``life`` runs a pass: at its start, at each midnight it is up for
    (a little late, as it wakes for the tick) and every 50 minutes (a wake for nothing)."""
    up, down = life
    at = {up}
    midnight = up.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    while midnight < down:
        at.add(midnight + timedelta(milliseconds=250))
        midnight += timedelta(days=1)
    wake = up + timedelta(minutes=50)
    while wake < down:
        at.add(wake)
        wake += timedelta(minutes=50)
    return sorted(at)


def test_a_daily_schedule_fires_once_a_day_across_frequent_restarts(registry, database_url, schema):
    from hyrex_like import every
    from hyrex_like.worker.scheduler import Scheduler

    log = structlog.get_logger("tests.scheduler")

    @registry.task(schedule=every(timedelta(days=1)))
    def daily() -> None:
        pass

    registry.migrate()
    start = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)  # up at the first midnight
    lives = _lives(start, 10)
    gone = lives[-1][1]  # the last scheduler stops: later ticks are nobody's business
    midnights = [datetime(2026, 3, d, tzinfo=UTC) for d in range(2, 15)]
    midnights = [m for m in midnights if m < gone]
    assert len(midnights) >= 10
    missed = [m for m in midnights if not any(up <= m < down for up, down in lives)]
    assert missed and len(missed) < len(midnights)  # both paths: on time, and caught up
    created = 0
    for life in lives:
        # a restart: a new scheduler (and connection), nothing in memory
        scheduler = Scheduler(lambda: _connect(database_url, schema), registry, log)
        try:
            for now in _passes(life):
                created += scheduler.run_once(now)
        finally:
            scheduler.close()

    days = [r[0] for r in query(database_url, schema, "SELECT scheduled_for FROM task ORDER BY 1")]
    assert days == midnights  # each day once: on time, or late after a restart across midnight
    assert created == len(days)
    assert [
        r[0] for r in query(database_url, schema, "SELECT tick_at FROM schedule_tick ORDER BY 1")
    ] == midnights
