"""Schedules without a worker: parsing and the refusals at decoration, `every`'s alignment, and
which ticks a scheduler pass fires (`due_ticks`) under each catch-up policy, with an injected
clock. A registry connects only on first use, so these never touch the database (except the
last test, which reads `hy.schedules()` back from one).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest
from pydantic import BaseModel

import hyrex_like
from hyrex_like import HyrexRegistry, InvalidSchedule, InvalidTaskOption, cron, crontab, every
from hyrex_like.catch_up import due_ticks
from hyrex_like.schedules import MAX_CATCH_UP_TICKS, Cron, Every, Schedule

MIN = timedelta(minutes=1)
DAY = timedelta(days=1)


def at(text: str) -> datetime:
    """An aware UTC datetime from ``YYYY-MM-DD HH:MM[:SS]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Report(BaseModel):
    kind: str
    days: int


@pytest.fixture
def hy() -> HyrexRegistry:
    return HyrexRegistry("postgresql://nobody@schedules.invalid/none")


# ------------------------------------------------------------------ the public names


def test_every_cron_crontab_and_the_error_are_exported() -> None:
    for name in ("every", "cron", "crontab", "Schedule", "ScheduleInfo", "InvalidSchedule"):
        assert name in hyrex_like.__all__
    assert issubclass(InvalidSchedule, InvalidTaskOption)


# ------------------------------------------------------------------ decoration


def test_schedule_is_bound_at_decoration_with_the_payload_json_of_the_task(
    hy: HyrexRegistry,
) -> None:
    @hy.task(schedule=every(timedelta(hours=1), payload={"kind": "daily", "days": "7"}))
    def report(r: Report) -> None:
        pass

    schedule = report.schedule
    assert isinstance(schedule, Every)
    # the task's own validation ran: "7" became 7, as a send would store it
    assert schedule.payload_json == report.dump_payload(Report(kind="daily", days=7))
    assert hy.scheduled() == {"report": report}


def test_schedule_on_a_task_without_payload_and_on_an_async_task(hy: HyrexRegistry) -> None:
    @hy.task(schedule=cron("*/5 * * * *", tz="Europe/Paris"))
    def tidy() -> None:
        pass

    @hy.task(name="later", queue="slow", schedule=crontab(minute=0, hour="*/2"))
    async def later() -> None:
        pass

    @hy.task
    def plain() -> None:
        pass

    assert tidy.schedule is not None and tidy.schedule.payload_json == "null"
    assert later.schedule == cron("0 */2 * * *")._bind("later", later.dump_payload)
    assert plain.schedule is None
    assert sorted(hy.scheduled()) == ["later", "tidy"]


def test_explicit_none_payload_is_allowed_for_a_task_without_payload(hy: HyrexRegistry) -> None:
    @hy.task(schedule=every(60, payload=None))
    def ping() -> None:
        pass

    assert ping.schedule is not None and ping.schedule.payload_json == "null"


REFUSED: list[tuple[str, Any, str]] = [
    ("bad_expression", cron("*/5 * * *"), r"4 fields"),
    ("bad_field", cron("61 * * * *"), r"bad cron expression '61 \* \* \* \*'"),
    ("never", cron("0 0 31 2 *"), r"bad cron expression"),
    ("unknown_zone", cron("0 * * * *", tz="Mars/Olympus"), r"unknown time zone 'Mars/Olympus'"),
    ("bad_zone_key", cron("0 * * * *", tz="../etc"), r"unknown time zone"),
    (
        "fixed_offset",
        cron("0 * * * *", tz=timezone(timedelta(hours=1))),  # type: ignore[arg-type]
        r"IANA zone",
    ),
    ("naive_start", every(60, start=datetime(2026, 1, 1)), r"start must be a timezone-aware"),
    ("bad_catch_up", every(60, catch_up="some"), r"catch_up must be"),  # type: ignore[arg-type]
    ("bad_window", every(60, catch_up_window=timedelta(0)), r"catch_up_window must be"),
    ("zero_interval", every(timedelta(0)), r"at least 1 second"),
    ("negative_interval", every(-5), r"at least 1 second"),
    ("sub_second", every(0.5), r"at least 1 second"),
    ("infinite", every(float("inf")), r"finite interval"),
    ("not_a_duration", every("5m"), r"takes a timedelta"),  # type: ignore[arg-type]
    ("huge_window", every(1, catch_up="all", catch_up_window=timedelta(days=2)), r"more than"),
    ("bad_crontab", crontab(minute="0 5"), r"crontab minute='0 5' is not one cron field"),
    ("not_a_schedule", "*/5 * * * *", r"expected every\(...\), cron\(...\) or crontab"),
]


@pytest.mark.parametrize(("task_name", "schedule", "problem"), REFUSED, ids=[r[0] for r in REFUSED])
def test_unusable_schedule_is_refused_at_decoration_naming_the_task(
    hy: HyrexRegistry, task_name: str, schedule: Any, problem: str
) -> None:
    def fn() -> None:
        pass

    with pytest.raises(InvalidSchedule, match=rf"^schedule of task {task_name}: .*{problem}"):
        hy.task(name=task_name, schedule=schedule)(fn)
    assert task_name not in hy.tasks  # nothing half-registered


def test_payload_missing_superfluous_or_invalid_is_refused_naming_the_task(
    hy: HyrexRegistry,
) -> None:
    def takes(r: Report) -> None:
        pass

    def takes_none() -> None:
        pass

    with pytest.raises(InvalidSchedule, match=r"schedule of task weekly: .*needs a payload"):
        hy.task(name="weekly", schedule=every(DAY))(takes)
    with pytest.raises(InvalidSchedule, match=r"schedule of task cleanup: .*takes no payload"):
        hy.task(name="cleanup", schedule=every(DAY, payload={"x": 1}))(takes_none)
    with pytest.raises(InvalidSchedule, match=r"schedule of task monthly: .*days") as caught:
        hy.task(name="monthly", schedule=cron("@monthly", payload={"kind": "m"}))(takes)
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)
    assert not hy.tasks


def test_a_zoneinfo_is_accepted_by_its_name() -> None:
    assert cron("0 9 * * MON", tz=ZoneInfo("Europe/Paris")) == cron(
        "0 9 * * MON", tz="Europe/Paris"
    )


def test_schedules_are_frozen_hashable_and_described() -> None:
    a = every(timedelta(minutes=5), payload={"unhashable": ["list"]})
    assert hash(a) == hash(every(300))
    assert {a, every(300), cron("@daily"), cron("0 0 * * *")} == {a, cron("@daily")}
    with pytest.raises(AttributeError):
        a.interval = timedelta(1)  # type: ignore[misc]
    assert a.describe() == "every 5m"
    assert every(timedelta(hours=1, minutes=30)).describe() == "every 1h30m"
    assert every(DAY, start=at("2026-01-01 06:00")).describe() == (
        "every 1d from 2026-01-01T06:00:00+00:00"
    )
    assert cron("*/5 * * * *", tz="Europe/Paris").describe() == "cron */5 * * * * (Europe/Paris)"
    assert cron("@hourly").describe() == "cron 0 * * * * (UTC)"


def test_an_unusable_schedule_used_directly_raises() -> None:
    with pytest.raises(InvalidSchedule, match="bad cron expression"):
        cron("99 * * * *").next_after(at("2026-01-01 00:00"))


# ------------------------------------------------------------------ every: alignment


def test_every_is_aligned_on_the_epoch_whatever_the_clock() -> None:
    five = every(timedelta(minutes=5))
    assert five.next_after(at("2026-05-05 12:03:10")) == at("2026-05-05 12:05")
    assert five.next_after(at("2026-05-05 12:05")) == at("2026-05-05 12:10")  # strictly after
    assert every(DAY).next_after(at("2026-05-05 12:03")) == at("2026-05-06 00:00")
    assert every(7).next_after(at("1970-01-01 00:00:13")) == at("1970-01-01 00:00:14")


def test_every_with_start_is_aligned_on_start_in_any_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    daily_6 = every(DAY, start=datetime(2026, 1, 1, 7, 0, tzinfo=paris))  # 06:00 UTC
    tick = daily_6.next_after(at("2026-07-01 10:00"))
    assert tick == at("2026-07-02 06:00") and tick.tzinfo is UTC
    # before start too: the grid runs both ways
    assert daily_6.next_after(at("2025-12-01 00:00")) == at("2025-12-01 06:00")


def test_ticks_of_a_long_range_are_exact_and_quick() -> None:
    second = every(1)
    begin = time.perf_counter()
    ticks = list(second.ticks(at("2026-01-01 00:00"), at("2026-01-02 00:00")))
    elapsed = time.perf_counter() - begin
    assert len(ticks) == 86_400 and ticks[0] == at("2026-01-01 00:00:01")
    assert ticks[-1] == at("2026-01-02 00:00")
    assert elapsed < 5, elapsed  # ~0.1 s here; arithmetic, no search
    # a range years long is not walked to find its newest tick
    assert second.latest_at_or_before(at("2030-01-01 00:00:00.5")) == at("2030-01-01 00:00")


def test_cron_ticks_are_aware_utc_and_strictly_after() -> None:
    c = cron("*/15 9-10 * * *", tz="America/New_York")
    ticks = list(c.ticks(at("2026-06-01 13:00"), at("2026-06-01 15:00")))  # EDT = UTC-4
    assert ticks == [at("2026-06-01 13:15")] + [
        at("2026-06-01 13:30"),
        at("2026-06-01 13:45"),
        at("2026-06-01 14:00"),
        at("2026-06-01 14:15"),
        at("2026-06-01 14:30"),
        at("2026-06-01 14:45"),
    ]
    assert all(t.tzinfo is UTC for t in ticks)
    assert c.next_after(at("2026-06-01 14:45")) == at("2026-06-02 13:00")


# ------------------------------------------------------------------ due_ticks: catch-up


def test_new_schedule_fires_only_its_on_time_tick_never_history() -> None:
    assert due_ticks(every(MIN), None, at("2026-03-01 12:00:30")) == [at("2026-03-01 12:00")]
    assert due_ticks(every(MIN, catch_up="all"), None, at("2026-03-01 12:00:30")) == [
        at("2026-03-01 12:00")
    ]
    # a tick 90 s old is missed; a schedule that never ran does not catch up
    assert due_ticks(cron("*/2 * * * *", catch_up="all"), None, at("2026-03-01 12:01:30")) == []


def test_every_second_fires_once_per_tick_in_passes() -> None:
    s = every(1)
    assert due_ticks(s, at("2026-03-01 12:00:00"), at("2026-03-01 12:00:00.9")) == []
    assert due_ticks(s, at("2026-03-01 12:00:00"), at("2026-03-01 12:00:01")) == [
        at("2026-03-01 12:00:01")
    ]
    # grace is the period (1 s): a pass 3 s late sees 2 missed ticks and 1..2 on time
    late = at("2026-03-01 12:00:03.5")
    assert due_ticks(s, at("2026-03-01 12:00:00"), late) == [at("2026-03-01 12:00:03")]
    assert due_ticks(every(1, catch_up="all"), at("2026-03-01 12:00:00"), late) == [
        at("2026-03-01 12:00:01"),
        at("2026-03-01 12:00:02"),
        at("2026-03-01 12:00:03"),
    ]


DOWN_FROM = at("2026-03-01 12:00")  # the last tick recorded before the outage
BACK_AT = at("2026-03-01 12:05:30")  # the first scheduler pass after 5 minutes down


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("latest", ["12:05"]),  # the newest tick is still on time (30 s <= 60 s): it alone
        ("all", ["12:01", "12:02", "12:03", "12:04", "12:05"]),
        ("none", ["12:05"]),  # on time, so not a missed one
    ],
)
def test_cluster_down_five_minutes_every_minute(catch_up: Any, expected: list[str]) -> None:
    got = due_ticks(every(MIN, catch_up=catch_up), DOWN_FROM, BACK_AT)
    assert got == [at(f"2026-03-01 {hm}") for hm in expected]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        ("latest", ["12:04"]),  # none on time (12:04 is 90 s old): the newest missed, once
        ("all", ["12:02", "12:04"]),
        ("none", []),
    ],
)
def test_cluster_down_five_minutes_cron(catch_up: Any, expected: list[str]) -> None:
    got = due_ticks(cron("*/2 * * * *", catch_up=catch_up), DOWN_FROM, BACK_AT)
    assert got == [at(f"2026-03-01 {hm}") for hm in expected]
    # the next pass, with what this one recorded, fires nothing more
    last = got[-1] if got else DOWN_FROM
    assert due_ticks(cron("*/2 * * * *", catch_up=catch_up), last, BACK_AT) == []


def test_catch_up_window_bounds_the_backfill() -> None:
    s = every(MIN, catch_up="all", catch_up_window=timedelta(minutes=2))
    assert due_ticks(s, DOWN_FROM, BACK_AT) == [at("2026-03-01 12:04"), at("2026-03-01 12:05")]
    # a day down, the default window (1 day) of every second: 86,400 ticks, no more
    s1 = every(1, catch_up="all")
    begin = time.perf_counter()
    got = due_ticks(s1, at("2026-03-01 00:00"), at("2026-03-05 00:00:00.5"))
    elapsed = time.perf_counter() - begin
    assert len(got) == 86_400 and got[0] == at("2026-03-04 00:00:01") and got == sorted(got)
    assert len(got) <= MAX_CATCH_UP_TICKS
    assert elapsed < 10, elapsed


def test_latest_after_a_long_outage_does_not_walk_the_outage() -> None:
    yearly = cron("0 0 1 1 *")
    assert due_ticks(yearly, at("2020-01-01 00:00"), at("2026-06-01 00:00")) == [
        at("2026-01-01 00:00")
    ]
    minutely = cron("* * * * *")
    begin = time.perf_counter()
    got = due_ticks(minutely, at("2016-01-01 00:00"), at("2026-06-01 00:10:30"))
    assert got == [at("2026-06-01 00:10")] and time.perf_counter() - begin < 2


def test_due_ticks_never_returns_a_recorded_tick() -> None:
    rng = random.Random(15)
    for schedule in (every(MIN), every(1, catch_up="all"), cron("*/2 * * * *", catch_up="all")):
        last = at("2026-03-01 12:00")
        now = last
        for _ in range(200):
            now += timedelta(seconds=rng.uniform(0, 200))
            due = due_ticks(schedule, last, now)
            assert all(last < t <= now for t in due) and due == sorted(set(due))
            last = due[-1] if due else last


def _run_restarting_scheduler(
    schedule: Schedule, days: int, seed: int
) -> tuple[list[datetime], datetime, int]:
    """Simulate schedulers that restart every few minutes (and are sometimes down across
    midnight): each start makes a pass, and while up it wakes at each tick and makes one. What
    a pass fires is recorded; the next pass resumes from the newest recorded tick. The
    schedule has run before (its tick preceding the simulation is recorded): a schedule that
    never ran fires only on time, so one first deployed while every scheduler is down starts
    at its next tick."""
    rng = random.Random(seed)
    clock = at("2026-04-01 23:50")
    end = clock + days * DAY
    previous = schedule.latest_at_or_before(clock)
    assert previous is not None
    fired: list[datetime] = [previous]
    late = 0  # ticks fired after their grace: the scheduler was down at the tick
    while clock < end:
        up_until = clock + timedelta(minutes=rng.uniform(2, 15))
        now = clock
        while now <= up_until:
            last = max(fired) if fired else None
            due = due_ticks(schedule, last, now)
            assert not set(due) & set(fired), "a tick fired twice"
            fired.extend(due)
            late += sum(now - t > schedule.grace(t) for t in due)
            now = schedule.next_after(now) + timedelta(milliseconds=rng.uniform(1, 900))
        # down for a while: sometimes for many minutes across midnight
        clock = up_until + timedelta(minutes=rng.choice([0.5, 1, 3, 20, 45]))
    return fired[1:], end, late


@pytest.mark.parametrize("catch_up", ["latest", "all"])
def test_daily_schedule_fires_once_a_day_across_frequent_restarts(catch_up: Any) -> None:
    daily = every(DAY, catch_up=catch_up)
    fired, end, late = _run_restarting_scheduler(daily, days=10, seed=7)
    assert late >= 1  # some midnights passed while every scheduler was down
    expected = list(daily.ticks(at("2026-04-01 23:50"), end - timedelta(hours=1)))
    assert len(expected) == 10
    assert fired == expected  # one per day, none missing, in order
    # the same with a cron (midnight in Paris, so a DST-free spring stretch of UTC 22:00)
    paris = cron("0 0 * * *", tz="Europe/Paris", catch_up=catch_up)
    fired, end, late = _run_restarting_scheduler(paris, days=10, seed=8)
    assert late >= 1
    expected = list(paris.ticks(at("2026-04-01 23:50"), end - timedelta(hours=1)))
    assert len(expected) == 10
    assert fired == expected


# ------------------------------------------------------------------ hy.schedules()


def test_schedules_lists_each_schedule_with_next_tick_and_no_last_task(
    database_url: str, schema: str
) -> None:
    hy = HyrexRegistry(database_url, schema=schema)

    @hy.task(schedule=every(timedelta(minutes=5), catch_up="none"))
    def five() -> None:
        pass

    @hy.task(schedule=cron("0 9 * * *", tz="Europe/Paris"))
    def nine() -> None:
        pass

    @hy.task
    def unscheduled() -> None:
        pass

    try:
        hy.migrate()
        infos = hy.schedules(now=at("2026-07-01 12:03"))
    finally:
        hy.close()
    assert [i.task_name for i in infos] == ["five", "nine"]
    assert infos[0].schedule == "every 5m" and infos[0].catch_up == "none"
    assert infos[0].next_tick == at("2026-07-01 12:05")
    assert infos[1].next_tick == at("2026-07-02 07:00")  # 09:00 CEST
    assert all(i.last_tick is None and i.last_task_id is None for i in infos)
    assert all(i.last_task_status is None for i in infos)


def test_cron_class_is_the_schedule_of_cron_and_crontab() -> None:
    assert isinstance(crontab(minute="*/5"), Cron)
    assert crontab(minute="*/5") == cron("*/5 * * * *")
    assert crontab(minute=0, hour=9, day_of_week="mon-fri", tz="Europe/Paris") == cron(
        "0 9 * * mon-fri", tz="Europe/Paris"
    )


def test_schedules_reports_the_last_tick_its_task_and_status(
    database_url: str, schema: str
) -> None:
    import structlog

    from hyrex_like import TaskStatus
    from hyrex_like.worker.scheduler import Scheduler

    hy = HyrexRegistry(database_url, schema=schema)

    @hy.task(schedule=every(timedelta(minutes=5)))
    def five() -> None:
        pass

    try:
        hy.migrate()
        scheduler = Scheduler(lambda: hy.store.connect(worker=True), hy, structlog.get_logger())
        try:
            assert scheduler.run_once(at("2026-07-01 12:05:10")) == 1
        finally:
            scheduler.close()
        (info,) = hy.schedules(now=at("2026-07-01 12:05:10"))
    finally:
        hy.close()
    assert info.last_tick == at("2026-07-01 12:05") and info.next_tick == at("2026-07-01 12:10")
    assert info.last_task_id is not None and info.last_task_status is TaskStatus.QUEUED


# ------------------------------------------------------------ a late pass, a changed expression

SEC = timedelta(seconds=1)
T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("catch_up", ["latest", "none", "all"])
def test_a_pass_late_by_less_than_the_grace_misses_no_tick_of_its_running_scheduler(catch_up):
    # every(1 s): a tick is on time for a second only. A pass 2.2 s after the previous one (a
    # slow statement, a stall) still fires every tick since that pass: they were never missed.
    s = every(SEC, catch_up=catch_up)
    assert due_ticks(s, T, T + 2.2 * SEC, running_since=T) == [T + SEC, T + 2 * SEC]
    # Without a previous pass (just started or reconnected) the policy decides.
    expected = {"latest": [T + 2 * SEC], "none": [T + 2 * SEC], "all": [T + SEC, T + 2 * SEC]}[
        catch_up
    ]
    assert due_ticks(s, T, T + 2.2 * SEC) == expected


def test_a_previous_pass_older_than_the_grace_is_a_stall_and_the_policy_decides():
    s = every(SEC)  # catch_up="latest"
    now = T + 90 * SEC
    assert due_ticks(s, T, now, running_since=T) == [now]  # the newest only


def test_a_changed_expression_does_not_backfill_the_new_one_from_the_old_ones_last_tick():
    # 03:00 was the old expression's tick; the new one's 04:00 today has passed by 10:00: a
    # new expression starts at its next tick, as a new schedule does.
    last = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    now = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
    for catch_up in ("latest", "all"):
        new = cron("0 4 * * *", catch_up=catch_up)
        assert due_ticks(new, last, now) == []
    # a tick of the new expression is still never fired at or before the old last tick
    assert due_ticks(cron("* * * * *"), now, now + timedelta(seconds=10)) == []


def test_a_cron_catch_up_window_that_may_hold_too_many_ticks_is_refused():
    hy = HyrexRegistry("postgresql://unused@localhost/none")
    with pytest.raises(InvalidSchedule, match="at most 69 days"):

        @hy.task(schedule=cron("* * * * *", catch_up="all", catch_up_window=timedelta(days=70)))
        def backfilled() -> None: ...

    @hy.task(schedule=cron("* * * * *", catch_up="all", catch_up_window=timedelta(days=69)))
    def backfilled_enough() -> None: ...
