"""Which ticks of a schedule a scheduler pass fires: the catch-up policies (``"latest"``,
``"all"``, ``"none"``) as one pure function of the schedule, the newest recorded tick and the
time, so they are tested with an injected clock and no database."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta

from .schedules import MAX_CATCH_UP_TICKS, MAX_GRACE, Schedule, _aware


def due_ticks(
    schedule: Schedule,
    last: datetime | None,
    now: datetime,
    running_since: datetime | None = None,
) -> list[datetime]:
    """The ticks a scheduler pass at ``now`` fires, oldest first; ``last`` is the newest tick
    recorded for this schedule (None: it never fired); ``running_since`` is when this
    scheduler's previous pass succeeded, if it was within `MAX_GRACE` (None: it just started,
    reconnected, or stalled).

    Pending ticks are those in (last, now]. A tick is on time while ``now - tick`` is less
    than its grace (min(60 s, the period)), or when it came after ``running_since`` (a pass
    that is late, by a slow statement or a stall shorter than the grace, misses nothing);
    older ones are missed, and the policy decides: ``"latest"`` fires the on-time ticks, or
    else the newest missed one (once); ``"all"`` fires the missed ticks no older than
    ``catch_up_window`` (at most the newest `MAX_CATCH_UP_TICKS`) and the on-time ones;
    ``"none"`` fires the on-time ones only. A schedule that never fired, or whose newest
    recorded tick is no tick of it (its expression changed), considers only its on-time ticks
    (it never backfills history), and never one at or before ``last``.
    """
    schedule.check()
    now = _aware(now, "now")
    floor = now - MAX_GRACE  # no tick older than this is on time
    if running_since is not None:
        running_since = _aware(running_since, "running_since")
        if now - running_since <= MAX_GRACE:
            floor = min(floor, running_since)
        else:
            running_since = None
    if last is not None:
        last = _aware(last, "last")
        floor = max(floor, last)
    on_time = [
        t
        for t in schedule.ticks(floor, now)
        if now - t < schedule.grace(t) or (running_since is not None and t > running_since)
    ]
    if last is None or schedule.catch_up == "none" or not _is_tick(schedule, last):
        return on_time
    first_on_time = on_time[0] if on_time else now + timedelta(microseconds=1)
    if schedule.catch_up == "latest":
        if on_time:
            return on_time
        newest = schedule.latest_at_or_before(now, after=last)
        return [newest] if newest is not None else []
    # "all": the window bounds the walk, so a long outage costs at most the window's ticks
    oldest = max(last, now - schedule.catch_up_window - timedelta(microseconds=1))
    missed: collections.deque[datetime] = collections.deque(maxlen=MAX_CATCH_UP_TICKS)
    for t in schedule.ticks(oldest, now):
        if t >= first_on_time:
            break
        missed.append(t)
    return [*missed, *on_time]


def _is_tick(schedule: Schedule, t: datetime) -> bool:
    """Whether ``t`` is a tick of ``schedule`` (not one of an expression it replaced)."""
    return schedule.next_after(t - timedelta(microseconds=1)) == t
