"""Cron in a named zone across DST: Europe/Paris springs forward on 2026-03-29 (02:00 CET ->
03:00 CEST: the wall times 02:00-02:59 do not exist) and falls back on 2026-10-25 (03:00 CEST
-> 02:00 CET: the wall times 02:00-02:59 happen twice).

What cronsim does, as Debian's cron and cronie do (the ISC cron DST rules):

- a fixed-time expression (minute and hour both fixed, ``30 2 * * *``) runs once every day. A
  wall time the spring-forward skips runs at the first minute that exists after it (02:30 ->
  03:00 CEST, 01:00 UTC); a wall time the fall-back repeats runs once, at its first occurrence
  (02:30 CEST, 00:30 UTC), never again at 02:30 CET.
- any other expression (``0 * * * *``, ``*/15 * * * *``) matches real instants: the skipped hour
  has no ticks (the spring-forward day has 23 hours, 92 quarters); the repeated hour is two real
  hours and ticks in both (the fall-back day has 25 hours, 100 quarters), so ticks stay evenly
  spaced in UTC: no double run of one instant, no gap.

Each fixture also drives scheduler passes once a minute across the day (`due_ticks`, resuming
from what the earlier passes recorded): every tick fires exactly once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hyrex_like import cron
from hyrex_like.catch_up import due_ticks
from hyrex_like.schedules import Cron

PARIS = ZoneInfo("Europe/Paris")
SPRING = date(2026, 3, 29)
FALL = date(2026, 10, 25)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local_day(day: date) -> tuple[datetime, datetime]:
    """The UTC bounds of a Paris calendar day: [midnight, next midnight)."""
    start = datetime(day.year, day.month, day.day, tzinfo=PARIS)
    end = start.replace(day=day.day + 1)
    return start.astimezone(UTC), end.astimezone(UTC)


def ticks_of_day(schedule: Cron, day: date) -> list[datetime]:
    start, end = local_day(day)
    return list(schedule.ticks(start - timedelta(microseconds=1), end - timedelta(microseconds=1)))


def fired_by_passes(schedule: Cron, begin: datetime, end: datetime) -> list[datetime]:
    """Scheduler passes every minute (plus 7 s) from ``begin`` to ``end``, each resuming from
    the newest tick the earlier ones recorded."""
    fired: list[datetime] = []
    last = schedule.latest_at_or_before(begin)
    now = begin + timedelta(seconds=7)
    while now < end:
        due = due_ticks(schedule, last, now)
        fired.extend(due)
        last = due[-1] if due else last
        now += timedelta(minutes=1)
    return fired


def test_the_zone_really_changes_on_those_days() -> None:
    assert local_day(SPRING)[1] - local_day(SPRING)[0] == timedelta(hours=23)
    assert local_day(FALL)[1] - local_day(FALL)[0] == timedelta(hours=25)


def test_fixed_time_in_the_skipped_hour_runs_right_after_the_jump_once() -> None:
    s = cron("30 2 * * *", tz="Europe/Paris")
    assert ticks_of_day(s, date(2026, 3, 28)) == [at("2026-03-28 01:30")]  # 02:30 CET
    assert ticks_of_day(s, SPRING) == [at("2026-03-29 01:00")]  # 03:00 CEST: no lost day
    assert ticks_of_day(s, date(2026, 3, 30)) == [at("2026-03-30 00:30")]  # 02:30 CEST
    assert s.next_after(at("2026-03-29 00:59")) == at("2026-03-29 01:00")
    assert s.next_after(at("2026-03-29 01:00")) == at("2026-03-30 00:30")


def test_fixed_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    s = cron("30 2 * * *", tz="Europe/Paris")
    assert ticks_of_day(s, date(2026, 10, 24)) == [at("2026-10-24 00:30")]  # 02:30 CEST
    assert ticks_of_day(s, FALL) == [at("2026-10-25 00:30")]  # 02:30 CEST, not 02:30 CET
    assert ticks_of_day(s, date(2026, 10, 26)) == [at("2026-10-26 01:30")]  # 02:30 CET
    # asked from inside the repeated hour (02:10 CET, after the first 02:30): tomorrow
    assert s.next_after(at("2026-10-25 01:10")) == at("2026-10-26 01:30")
    # a pass at 02:30 CET, with 02:30 CEST recorded, fires nothing: no double run
    assert due_ticks(s, at("2026-10-25 00:30"), at("2026-10-25 01:30:05")) == []


@pytest.mark.parametrize(
    ("expression", "spring", "fall", "step"),
    [
        ("0 * * * *", 23, 25, timedelta(hours=1)),
        ("*/15 * * * *", 92, 100, timedelta(minutes=15)),
    ],
)
def test_wildcard_hours_tick_on_real_instants_across_both_changes(
    expression: str, spring: int, fall: int, step: timedelta
) -> None:
    s = cron(expression, tz="Europe/Paris")
    for day, count in ((SPRING, spring), (FALL, fall)):
        ticks = ticks_of_day(s, day)
        assert len(ticks) == count
        assert len(set(ticks)) == count  # no instant twice
        start, end = local_day(day)
        assert ticks[0] == start and ticks[-1] == end - step
        assert all(b - a == step for a, b in zip(ticks, ticks[1:], strict=False))  # no gap
    # the skipped wall hour has no tick; the repeated one has two, an hour apart
    walls = [t.astimezone(PARIS) for t in ticks_of_day(s, SPRING)]
    assert not any(w.hour == 2 for w in walls)
    two_am = [t for t in ticks_of_day(s, FALL) if t.astimezone(PARIS).hour == 2]
    per_hour = fall // 25
    assert len(two_am) == 2 * per_hour  # 02:xx CEST, then 02:xx CET
    assert two_am[per_hour] - two_am[0] == timedelta(hours=1)


@pytest.mark.parametrize("expression", ["30 2 * * *", "0 * * * *", "*/15 * * * *"])
@pytest.mark.parametrize("day", [SPRING, FALL], ids=["spring", "fall"])
def test_passes_across_the_change_fire_each_tick_exactly_once(expression: str, day: date) -> None:
    s = cron(expression, tz="Europe/Paris")
    start, end = local_day(day)
    begin, finish = start - timedelta(hours=2), end + timedelta(hours=2)
    fired = fired_by_passes(s, begin, finish)
    assert fired == list(s.ticks(begin, finish - timedelta(minutes=1)))
    assert len(fired) == len(set(fired))
    local_dates = {t.astimezone(PARIS).date() for t in fired}
    assert day in local_dates  # no lost day


def test_daily_fixed_time_across_a_whole_year_runs_once_every_day() -> None:
    s = cron("30 2 * * *", tz="Europe/Paris")
    ticks = list(s.ticks(at("2025-12-31 23:00"), at("2026-12-31 23:00")))
    days = [t.astimezone(PARIS).date() for t in ticks]
    assert len(ticks) == 365 and len(set(days)) == 365
