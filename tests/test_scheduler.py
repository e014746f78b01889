"""The scheduler service (#15) against a real server, one pass at a time with an injected
clock: ticks become tasks carrying their tick time; schedulers racing on the same ticks make one
task per tick; a pass cut off by a terminated backend loses and doubles nothing; a restarted
scheduler resumes from the newest recorded tick under the schedule's catch-up policy; a changed
expression fires no tick time twice; a removed schedule stops."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry, every
from hyrex_like.logs import get_logger
from hyrex_like.observer import RecordingObserver
from hyrex_like.worker.scheduler import Scheduler

from .helpers import count, query, terminate_backends, wait_until

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # on every schedule's tick below
S = timedelta(seconds=1)
LOG = get_logger("hyrex_like.tests.scheduler")


@pytest.fixture
def schedulers(registry: HyrexRegistry) -> Iterator[list[Scheduler]]:
    """Schedulers made by a test, each with a connection of its own; closed at the end."""
    made: list[Scheduler] = []
    yield made
    for s in made:
        s.stop()


def make(
    made: list[Scheduler], hy: HyrexRegistry, observer: RecordingObserver | None = None
) -> Scheduler:
    hy.migrate()
    s = Scheduler(lambda: hy.store.connect(worker=True), hy, LOG, observer=observer)
    made.append(s)
    return s


def tasks(database_url: str, schema: str) -> list[tuple[Any, ...]]:
    """(task name, scheduled_for, queue, priority, max_retries, args) of every task, by tick."""
    return query(
        database_url,
        schema,
        "SELECT task_name, scheduled_for, queue, priority, max_retries, args FROM task"
        " ORDER BY task_name, scheduled_for",
    )


def ticks_of(database_url: str, schema: str, name: str) -> list[datetime]:
    return [
        r[0]
        for r in query(
            database_url,
            schema,
            "SELECT scheduled_for FROM task WHERE task_name = %s ORDER BY scheduled_for",
            [name],
        )
    ]


def assert_each_tick_once(database_url: str, schema: str) -> None:
    """Every tick row has its task (same id, same time) and no tick time has two tasks."""
    orphans = query(
        database_url,
        schema,
        "SELECT k.schedule_name, k.tick_at FROM schedule_tick AS k LEFT JOIN task AS t"
        " ON t.id = k.task_id AND t.scheduled_for = k.tick_at AND t.task_name = k.schedule_name"
        " WHERE t.id IS NULL",
    )
    assert orphans == []
    doubles = query(
        database_url,
        schema,
        "SELECT task_name, scheduled_for, count(*) FROM task WHERE scheduled_for IS NOT NULL"
        " GROUP BY 1, 2 HAVING count(*) > 1",
    )
    assert doubles == []
    [(n_ticks,)] = query(database_url, schema, "SELECT count(*) FROM schedule_tick")
    [(n_tasks,)] = query(
        database_url, schema, "SELECT count(*) FROM task WHERE scheduled_for IS NOT NULL"
    )
    assert n_ticks == n_tasks


def test_ticks_become_tasks_with_their_tick_time_and_the_tasks_config(
    registry, schedulers, database_url, schema
):
    @registry.task(
        schedule=every(timedelta(seconds=10), payload={"n": 7}),
        queue="timed",
        priority=9,
        max_retries=2,
    )
    def job(p: dict[str, int]) -> None:
        pass

    s = make(schedulers, registry)
    assert s.run_once(T0 + S) == 1  # a new schedule fires its on-time tick only: T0
    assert s.run_once(T0 + 5 * S) == 0
    assert s.run_once(T0 + 11 * S) == 1
    assert tasks(database_url, schema) == [
        ("job", T0, "timed", 9, 2, {"n": 7}),
        ("job", T0 + 10 * S, "timed", 9, 2, {"n": 7}),
    ]
    assert s.next_wake(T0 + 11 * S) == T0 + 20 * S
    assert_each_tick_once(database_url, schema)
    [info] = registry.schedules(now=T0 + 11 * S)
    assert (info.task_name, info.last_tick, info.next_tick) == ("job", T0 + 10 * S, T0 + 20 * S)
    assert str(info.last_task_status) == "queued"


def test_three_schedulers_racing_on_the_same_ticks_make_one_task_per_tick(
    registry, schedulers, database_url, schema
):
    @registry.task(schedule=every(timedelta(seconds=1)))
    def fast() -> None:
        pass

    @registry.task(schedule=every(timedelta(seconds=2), catch_up="all"))
    def slow() -> None:
        pass

    racers = [make(schedulers, registry) for _ in range(3)]
    steps = [T0 + k * S + timedelta(milliseconds=300) for k in range(20)]
    barrier = threading.Barrier(3)
    made = [0, 0, 0]

    def race(i: int) -> None:
        for now in steps:
            barrier.wait(30)
            made[i] += racers[i].run_once(now)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ticks_of(database_url, schema, "fast") == [T0 + k * S for k in range(20)]
    assert ticks_of(database_url, schema, "slow") == [T0 + 2 * k * S for k in range(10)]
    assert sum(made) == 30  # each tick counted by the one scheduler that made it
    assert_each_tick_once(database_url, schema)


def test_a_pass_cut_off_by_a_terminated_backend_loses_and_doubles_nothing(
    registry, schedulers, database_url, schema
):
    @registry.task(schedule=every(timedelta(seconds=1), catch_up="all"))
    def job() -> None:
        pass

    observer = RecordingObserver()
    s = make(schedulers, registry, observer)
    assert s.run_once(T0 + timedelta(milliseconds=500)) == 1
    # Another session holds the key of tick T0+2 s (uncommitted): the pass inserting ticks
    # T0+1 s..T0+3 s waits on it in mid-statement, and its backend is terminated there.
    blocker = psycopg.connect(database_url, options=f"-c search_path={schema}")
    result: list[int] = []
    try:
        blocker.execute(
            "INSERT INTO schedule_tick (schedule_name, tick_at, task_id) VALUES ('job', %s, %s)",
            [T0 + 2 * S, uuid.uuid4()],
        )
        assert s.db is not None
        backend = s.db.info.backend_pid
        cut = threading.Thread(target=lambda: result.append(s.run_once(T0 + 3 * S)))
        cut.start()

        def waiting_on_the_tick() -> list[int]:
            rows = query(
                database_url,
                schema,
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> %s AND datname = current_database()",
                [blocker.info.backend_pid],
            )
            return [row[0] for row in rows]

        assert wait_until(waiting_on_the_tick, what="the pass waiting on the held tick") == [
            backend
        ]
        assert terminate_backends(database_url, [backend]) == 1
        # The pass is done again at once on a fresh connection (the statement was all or
        # nothing: no tick of it was recorded) and waits on the held key again.
        again = wait_until(
            lambda: [pid for pid in waiting_on_the_tick() if pid != backend],
            what="the pass, retried on a fresh connection, waiting on the held tick",
        )
        assert len(again) == 1
        assert ticks_of(database_url, schema, "job") == [T0]
    finally:
        blocker.rollback()  # the other session gives the tick up
        blocker.close()
    cut.join(30)
    assert result == [3]  # T0+1 s..T0+3 s, each once
    assert observer.counts["scheduler_skipped"] == 0
    assert s.run_once(T0 + 3 * S + timedelta(milliseconds=200)) == 0
    assert ticks_of(database_url, schema, "job") == [T0 + k * S for k in range(4)]
    assert_each_tick_once(database_url, schema)


def test_a_tick_due_after_the_idle_connection_died_is_fired_at_once(
    registry, schedulers, database_url, schema
):
    # every(1 s) has a grace of one second: a pass that failed and retried a second later
    # would find its tick missed. The pass is done again at once on a fresh connection.
    @registry.task(schedule=every(timedelta(seconds=1)))
    def job() -> None:
        pass

    observer = RecordingObserver()
    s = make(schedulers, registry, observer)
    assert s.run_once(T0 + timedelta(milliseconds=10)) == 1
    assert s.db is not None
    assert terminate_backends(database_url, [s.db.info.backend_pid]) == 1
    assert s.run_once(T0 + S + timedelta(milliseconds=10)) == 1
    assert observer.counts["scheduler_skipped"] == 0
    assert ticks_of(database_url, schema, "job") == [T0, T0 + S]


M5 = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("latest", [T0, T0 + 4 * M5]),  # down 22 minutes: the newest missed tick, once
        ("all", [T0 + k * M5 for k in range(5)]),  # each missed tick
        ("none", [T0]),  # none of them
    ],
)
def test_a_restarted_scheduler_resumes_from_the_newest_recorded_tick(
    registry, schedulers, database_url, schema, catch_up, expected
):
    @registry.task(schedule=every(M5, catch_up=catch_up))
    def five_minutely() -> None:
        pass

    first = make(schedulers, registry)
    assert first.run_once(T0 + S) == 1
    first.stop()
    # the cluster is down; a new scheduler starts 22 minutes after T0 (no tick on time)
    again = make(schedulers, registry)
    again.run_once(T0 + 22 * 60 * S)
    assert ticks_of(database_url, schema, "five_minutely") == expected
    again.run_once(T0 + 5 * M5 + S)  # and it goes on from there, on time
    assert ticks_of(database_url, schema, "five_minutely")[-1] == T0 + 5 * M5
    assert_each_tick_once(database_url, schema)


def test_a_changed_expression_fires_no_tick_time_twice(registry, schedulers, database_url, schema):
    @registry.task(schedule=every(timedelta(seconds=10)))
    def job() -> None:
        pass

    old = make(schedulers, registry)
    assert old.run_once(T0 + S) == 1  # T0
    # a new deploy changes the expression; for a while old and new schedulers both run
    new_code = HyrexRegistry(database_url, schema=schema)
    try:

        @new_code.task(name="job", schedule=every(timedelta(seconds=5)))
        def job_v2() -> None:
            pass

        new = make(schedulers, new_code)
        assert new.run_once(T0 + 2 * S) == 0  # T0 is recorded: not again
        assert new.run_once(T0 + 5 * S + S) == 1  # T0+5 s: the new expression's own tick
        assert old.run_once(T0 + 10 * S + S) == 1  # T0+10 s, a tick of both: made once
        assert new.run_once(T0 + 10 * S + S) == 0
        assert new.run_once(T0 + 15 * S + S) == 1
    finally:
        new_code.close()
    assert ticks_of(database_url, schema, "job") == [T0 + k * 5 * S for k in range(4)]
    assert_each_tick_once(database_url, schema)


def test_a_removed_schedule_stops_firing(registry, schedulers, database_url, schema):
    @registry.task(schedule=every(timedelta(seconds=10)))
    def dropped() -> None:
        pass

    make(schedulers, registry).run_once(T0 + S)
    new_code = HyrexRegistry(database_url, schema=schema)
    try:

        @new_code.task(name="dropped")  # still a task, no longer scheduled
        def dropped_v2() -> None:
            pass

        @new_code.task(schedule=every(timedelta(seconds=10)))
        def kept() -> None:
            pass

        s = make(schedulers, new_code)
        assert sorted(s.definitions) == ["kept"]
        assert s.run_once(T0 + 31 * S) == 1
    finally:
        new_code.close()
    assert ticks_of(database_url, schema, "dropped") == [T0]
    assert ticks_of(database_url, schema, "kept") == [T0 + 30 * S]


def test_the_thread_fires_each_tick_as_it_comes(registry, schedulers, database_url, schema):
    """Real clock: the thread sleeps until each tick and fires it (tasks made within a second
    of their tick time, asserted loosely; bench/schedules.py measures lateness)."""

    @registry.task(schedule=every(timedelta(seconds=1)))
    def beat() -> None:
        pass

    s = make(schedulers, registry)
    s.start()
    wait_until(lambda: count(database_url, schema) >= 3, what="3 ticks fired")
    s.stop()
    rows = query(
        database_url,
        schema,
        "SELECT extract(epoch FROM created_at - scheduled_for) FROM task ORDER BY scheduled_for",
    )
    assert len(rows) >= 2
    assert max(float(r[0]) for r in rows[1:]) < 5.0  # the first may be a tick just past
    assert_each_tick_once(database_url, schema)


class Log:
    """A logger that keeps the events it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def _keep(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((level, event))

    def __getattr__(self, level: str) -> Any:
        return self._keep(level)


def test_a_database_outage_is_logged_once_and_the_ticks_fire_when_it_is_back(
    registry, schedulers, database_url, schema, db_proxy
):
    @registry.task(schedule=every(timedelta(seconds=1), catch_up="all"))
    def job() -> None:
        pass

    registry.migrate()
    proxied = HyrexRegistry(db_proxy.url, schema=schema)
    observer = RecordingObserver()
    log = Log()
    s = Scheduler(
        lambda: proxied.store.connect(worker=True, connect_timeout=2),
        registry,
        log,
        observer=observer,
    )
    schedulers.append(s)
    try:
        db_proxy.up()
        assert s.run_once(T0 + timedelta(milliseconds=500)) == 1
        db_proxy.down()
        assert s.run_once(T0 + timedelta(milliseconds=1500)) == 0
        assert s.run_once(T0 + timedelta(milliseconds=2500)) == 0
        assert observer.counts["scheduler_skipped"] == 2
        db_proxy.up()
        assert s.run_once(T0 + timedelta(milliseconds=3500)) == 3  # T0+1 s..T0+3 s
    finally:
        proxied.close()
    assert log.events.count(("warning", "scheduler_database_unavailable")) == 1
    assert ("info", "scheduler_database_reconnected") in log.events
    assert ticks_of(database_url, schema, "job") == [T0 + k * S for k in range(4)]
    assert_each_tick_once(database_url, schema)


def test_a_schedule_that_raises_is_logged_once_and_the_others_fire(
    registry, schedulers, database_url, schema
):
    @registry.task(
        schedule=every(timedelta(seconds=1)), max_retries=1, retry_backoff=lambda n: 1 / 0
    )
    def broken() -> None:
        pass

    @registry.task(schedule=every(timedelta(seconds=1)))
    def fine() -> None:
        pass

    registry.migrate()
    log = Log()
    s = Scheduler(lambda: registry.store.connect(worker=True), registry, log)
    schedulers.append(s)
    for k in range(3):
        assert s.run_once(T0 + k * S + timedelta(milliseconds=500)) == 1
    assert log.events.count(("error", "schedule_failed")) == 1
    assert ticks_of(database_url, schema, "fine") == [T0, T0 + S, T0 + 2 * S]
    assert ticks_of(database_url, schema, "broken") == []


def test_old_tick_rows_are_pruned_but_never_a_schedules_newest(
    registry, schedulers, database_url, schema
):
    @registry.task(schedule=every(timedelta(hours=1), catch_up="all"))
    def hourly() -> None:
        pass

    @registry.task(schedule=every(timedelta(days=1), catch_up_window=timedelta(days=3)))
    def daily() -> None:
        pass

    s = make(schedulers, registry)
    for hour in range(4 * 24 + 1):  # four days, a pass each hour
        s.run_once(T0 + hour * 3600 * S + S)
    assert count(database_url, schema, table="schedule_tick") == 4 * 24 + 1 + 4
    now = T0 + 4 * 24 * 3600 * S + S
    # kept: the catch-up window and a day more (hourly: 2 days; daily: 4 days, so all 4)
    assert s.prune(now) == 2 * 24 + 1  # hourly's T0..T0+48 h
    kept = "SELECT min(tick_at), count(*) FROM schedule_tick WHERE schedule_name = %s"
    assert query(database_url, schema, kept, ["hourly"]) == [(T0 + 49 * 3600 * S, 48)]
    assert query(database_url, schema, kept, ["daily"]) == [(T0 + 12 * 3600 * S, 4)]
    assert s.prune(now + 365 * 24 * 3600 * S) == 47 + 3  # a year on: only the newest stay
    assert query(
        database_url, schema, "SELECT schedule_name, tick_at FROM schedule_tick ORDER BY 1"
    ) == [
        ("daily", T0 + (3 * 24 + 12) * 3600 * S),
        ("hourly", T0 + 4 * 24 * 3600 * S),
    ]
    assert count(database_url, schema) == 4 * 24 + 1 + 4  # the tasks are not the prune's


def test_a_late_pass_of_a_running_scheduler_fires_every_tick_since_its_previous_one(
    registry, schedulers, database_url, schema
):
    @registry.task(schedule=every(timedelta(seconds=1)))  # catch_up="latest"
    def job() -> None:
        pass

    s = make(schedulers, registry)
    assert s.run_once(T0) == 1
    assert s.run_once(T0 + 2.2 * S) == 2  # late by more than the 1 s grace: nothing missed
    assert ticks_of(database_url, schema, "job") == [T0, T0 + S, T0 + 2 * S]


def test_a_tick_found_due_by_a_fast_clock_waits_for_its_time(
    registry, schedulers, database_url, schema
):
    @registry.task(schedule=every(timedelta(seconds=1)))
    def job() -> None:
        pass

    ahead = datetime.now(UTC).replace(microsecond=0) + 30 * S  # this host's clock runs fast
    assert make(schedulers, registry).run_once(ahead) == 1
    [(run_after, scheduled_for)] = query(
        database_url, schema, "SELECT run_after, scheduled_for FROM task WHERE task_name = 'job'"
    )
    assert run_after == scheduled_for == ahead  # not claimable before the tick
