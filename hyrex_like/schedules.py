"""Periodic tasks: when a schedule ticks (`every`, `cron`, `crontab`) and which ticks a scheduler
pass fires (`hyrex_like.catch_up.due_ticks`).

Everything here is pure: times go in and out as timezone-aware UTC datetimes, the clock is an
argument, nothing touches the database. The scheduler (`hyrex_like.worker.scheduler`) records
the ticks `due_ticks` returns under the key (task name, tick time), so a tick fires once however
many schedulers run.

A schedule is built before the task it decorates exists, so its checks run when it is bound to
the task (`Schedule._bind`, at decoration) and raise `InvalidSchedule` naming the task.
"""

from __future__ import annotations

import collections
import dataclasses
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo

from . import _cron
from .errors import InvalidSchedule
from .states import TaskStatus
from .task_config import _UNSET

if TYPE_CHECKING:
    from .task import TaskDefinition  # for the annotation only: it imports us

CatchUp = Literal["latest", "all", "none"]
"""What a scheduler pass does with missed ticks: see `hyrex_like.catch_up.due_ticks`."""

MAX_GRACE = timedelta(seconds=60)
"""A tick is on time while no older than this (or than its schedule's period, if shorter)."""

MIN_INTERVAL = timedelta(seconds=1)
"""The shortest `every` interval: the scheduler's precision is well under a second, and the
tick key is the tick time, but shorter periods would be a busy loop, not a schedule."""

MAX_CATCH_UP_TICKS = 100_000
"""The most ticks one pass backfills under ``catch_up="all"`` (the newest ones win); `every`
refuses a window holding more at decoration."""

DEFAULT_WINDOW = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# How far back `Cron.latest_at_or_before` looks, growing, so that a frequent expression costs a
# few ticks and a yearly one still finds its tick.
_LOOKBACKS = tuple(timedelta(days=d) for d in (2 / 1440, 2 / 24, 2, 64, 800, 366 * 51))


@dataclass(frozen=True)
class Schedule:
    """When a task runs by itself. Build one with `every`, `cron` or `crontab`.

    Equality and hash cover the timing, the catch-up policy and the bound payload's JSON (not
    the payload object, which need not be hashable).
    """

    catch_up: CatchUp = "latest"
    catch_up_window: timedelta = DEFAULT_WINDOW
    payload: Any = field(default=_UNSET, compare=False, repr=False)
    payload_json: str | None = None
    """The payload as the task's own ``dump_payload`` wrote it; set when bound to a task."""
    _invalid: str | None = field(default=None, repr=False)
    """A problem found while building (e.g. a crontab field), reported at decoration."""

    # -- what each kind provides -------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this schedule is unusable (None: it is fine)."""
        if self._invalid is not None:
            return self._invalid
        return self._timing_problem() or self._catch_up_problem()

    def _timing_problem(self) -> str | None:
        """What is wrong with when it ticks (each kind says)."""
        return None

    def _catch_up_problem(self) -> str | None:
        if self.catch_up not in get_args(CatchUp):
            return f"catch_up must be 'latest', 'all' or 'none', got {self.catch_up!r}"
        window = self.catch_up_window
        if not isinstance(window, timedelta) or window <= timedelta(0):
            return f"catch_up_window must be a positive timedelta, got {window!r}"
        return None

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (aware), as an aware UTC datetime."""
        raise NotImplementedError

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The ticks in (``after``, ``until``], in order, lazily (aware UTC datetimes)."""
        raise NotImplementedError

    def latest_at_or_before(self, t: datetime, *, after: datetime | None = None) -> datetime | None:
        """The newest tick <= ``t`` (and > ``after``, if given); None if there is none."""
        raise NotImplementedError

    def grace(self, tick: datetime) -> timedelta:
        """How long ``tick`` stays on time: min(60 s, the period at that tick)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short text for tables and logs: ``every 5m``, ``cron */5 * * * * (Europe/Paris)``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise `InvalidSchedule` if this schedule is unusable."""
        problem = self.problem()
        if problem is not None:
            raise InvalidSchedule(f"invalid schedule: {problem}")

    def _bind(self, task_name: str, dump_payload: Callable[[Any], str]) -> Schedule:
        """This schedule checked for the task ``task_name``, holding its payload's JSON.

        Raises `InvalidSchedule` naming the task: an unusable schedule, or a payload the task
        refuses (missing when it takes one, given when it takes none, or invalid)."""
        problem = self.problem()
        if problem is not None:
            raise InvalidSchedule(f"schedule of task {task_name}: {problem}")
        try:
            payload_json = dump_payload(self.payload)
        except Exception as exc:  # TypeError, ValidationError, PayloadTooLarge, ...
            text = str(exc).strip().replace("\n", "; ")
            raise InvalidSchedule(
                f"schedule of task {task_name}: its payload is refused: {text}"
            ) from exc
        return dataclasses.replace(self, payload_json=payload_json)


def _aware(t: datetime, what: str = "time") -> datetime:
    if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise InvalidSchedule(f"{what} must be a timezone-aware datetime, got {t!r}")
    return t.astimezone(UTC)


def _duration_text(d: timedelta) -> str:
    """``5m``, ``1h30m``, ``1d``, ``1.5s``: the largest units first."""
    micro = d // timedelta(microseconds=1)
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        n, micro = divmod(micro, size)
        if n:
            parts.append(f"{n}{unit}")
    if micro:
        parts.append(f"{micro / 1_000_000:g}s")
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Every(Schedule):
    """Ticks at ``start + k * interval`` for every integer k: aligned, whatever the clock at
    start-up (every(1 day) at 00:00 UTC, every(5 min) at :00, :05, ... with the default start)."""

    interval: timedelta = timedelta(minutes=1)
    start: datetime = EPOCH

    def _timing_problem(self) -> str | None:
        i = self.interval
        if not isinstance(i, timedelta):
            return f"every() takes a timedelta (or seconds), got {i!r}"
        if i < MIN_INTERVAL:
            return f"the interval must be at least 1 second, got {i!r}"
        s = self.start
        if not isinstance(s, datetime) or s.tzinfo is None or s.utcoffset() is None:
            return f"start must be a timezone-aware datetime, got {s!r}"
        return None

    def _catch_up_problem(self) -> str | None:
        problem = super()._catch_up_problem()
        if problem is None and self.catch_up == "all":
            if self.catch_up_window // self.interval > MAX_CATCH_UP_TICKS:
                return (
                    f"catch_up_window {self.catch_up_window} holds more than "
                    f"{MAX_CATCH_UP_TICKS} ticks of {_duration_text(self.interval)}; shorten it"
                )
        return problem

    def _index_at_or_before(self, t: datetime) -> int:
        return (_aware(t) - self._origin) // self.interval  # floor, exact (microseconds)

    def _tick(self, k: int) -> datetime:
        # in UTC: adding to a datetime in a zone with DST would add wall-clock time
        return self._origin + k * self.interval

    @property
    def _origin(self) -> datetime:
        return self.start.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime:
        self.check()
        return self._tick(self._index_at_or_before(t) + 1)

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        self.check()
        first = self._index_at_or_before(after) + 1
        last = self._index_at_or_before(until)
        return (self._tick(k) for k in range(first, last + 1))

    def latest_at_or_before(self, t: datetime, *, after: datetime | None = None) -> datetime | None:
        self.check()
        tick = self._tick(self._index_at_or_before(t))
        return None if after is not None and tick <= _aware(after) else tick

    def grace(self, tick: datetime) -> timedelta:
        return min(MAX_GRACE, self.interval)

    def describe(self) -> str:
        text = f"every {_duration_text(self.interval)}"
        if (self.start - EPOCH) % self.interval:
            text += f" from {self.start.astimezone(UTC).isoformat()}"
        return text


@dataclass(frozen=True)
class Cron(Schedule):
    """Ticks when a five-field cron expression matches, in a named IANA zone (default UTC).

    DST follows cronie: see `hyrex_like._cron`."""

    expression: str = "* * * * *"
    tz: str = "UTC"

    def _timing_problem(self) -> str | None:
        if not isinstance(self.expression, str):
            return f"the cron expression must be a str, got {self.expression!r}"
        if not isinstance(self.tz, str):
            return (
                f"tz must name an IANA zone (e.g. 'Europe/Paris'), got {self.tz!r}: a fixed "
                "offset or another tzinfo cannot follow the zone's DST rules"
            )
        try:
            _cron.check(self.expression, self.tz)
        except _cron.CronProblem as exc:
            return str(exc)
        return None

    def _after(self, t: datetime) -> Iterator[datetime]:
        self.check()
        return _cron.after(self.expression, self.tz, _aware(t))

    def next_after(self, t: datetime) -> datetime:
        for tick in self._after(t):
            return tick
        raise InvalidSchedule(f"cron expression {self.expression!r} never fires after {t}")

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        end = _aware(until)
        for tick in self._after(after):
            if tick > end:
                return
            yield tick

    def latest_at_or_before(self, t: datetime, *, after: datetime | None = None) -> datetime | None:
        end = _aware(t)
        floor = _aware(after) if after is not None else None
        for back in _LOOKBACKS:
            lo = end - back
            if floor is not None and lo <= floor:
                lo = floor
            newest = collections.deque(self.ticks(lo, end), maxlen=1)
            if newest:
                return newest[0]
            if lo == floor:
                return None
        return None

    def _catch_up_problem(self) -> str | None:
        problem = super()._catch_up_problem()
        # five fields: ticks are at least a minute apart, so this bounds a backfill's ticks
        limit = MAX_CATCH_UP_TICKS * _cron.MIN_PERIOD
        if problem is None and self.catch_up == "all" and self.catch_up_window > limit:
            return (
                f"catch_up_window {self.catch_up_window} may hold more than "
                f"{MAX_CATCH_UP_TICKS} ticks of a cron schedule (at most {limit.days} days)"
            )
        return problem

    def grace(self, tick: datetime) -> timedelta:
        return min(MAX_GRACE, _cron.MIN_PERIOD)  # five fields: never less than a minute apart

    def describe(self) -> str:
        return f"cron {self.expression} ({self.tz})"


def every(
    interval: timedelta | float,
    *,
    payload: Any = _UNSET,
    catch_up: CatchUp = "latest",
    catch_up_window: timedelta = DEFAULT_WINDOW,
    start: datetime | None = None,
) -> Every:
    """Tick every ``interval`` (a timedelta or seconds; at least 1 s), aligned on ``start``
    (an aware datetime; default the Unix epoch, so every(1 hour) ticks on the hour, UTC).

    ``payload``: what each tick sends, if the task takes one (checked at decoration).
    ``catch_up``: what to do with ticks missed while no scheduler ran: ``"latest"`` (run the
    newest once, the default), ``"all"`` (run each one no older than ``catch_up_window``,
    default 1 day), ``"none"`` (skip them).
    """
    span: Any = interval
    invalid = None
    if isinstance(interval, int | float) and not isinstance(interval, bool):
        try:
            span = timedelta(seconds=interval)
        except (ValueError, OverflowError):  # NaN, infinity, too large
            span, invalid = timedelta(0), f"every() needs a finite interval, got {interval!r}"
    return Every(
        interval=span,
        start=EPOCH if start is None else start,
        payload=payload,
        catch_up=catch_up,
        catch_up_window=catch_up_window,
        _invalid=invalid,
    )


def cron(
    expression: str,
    *,
    tz: str | ZoneInfo = "UTC",
    payload: Any = _UNSET,
    catch_up: CatchUp = "latest",
    catch_up_window: timedelta = DEFAULT_WINDOW,
) -> Cron:
    """Tick when the five-field cron ``expression`` matches (``"*/5 * * * *"``, ``"@daily"``)
    on the clocks of ``tz``, an IANA zone name or a `zoneinfo.ZoneInfo` (default ``"UTC"``).

    DST as cronie: a fixed time the spring-forward skips runs right after the jump, one the
    fall-back repeats runs once; other expressions match the instants that exist.
    ``payload``, ``catch_up``, ``catch_up_window``: as for `every`.
    """
    zone: Any = tz
    if isinstance(tz, ZoneInfo):
        zone = tz.key if tz.key else tz  # a ZoneInfo read from a file has no IANA name
    return Cron(
        expression=_cron.normalize(expression) if isinstance(expression, str) else expression,
        tz=zone,
        payload=payload,
        catch_up=catch_up,
        catch_up_window=catch_up_window,
    )


def crontab(
    minute: str | int = "*",
    hour: str | int = "*",
    day_of_month: str | int = "*",
    month: str | int = "*",
    day_of_week: str | int = "*",
    *,
    tz: str | ZoneInfo = "UTC",
    payload: Any = _UNSET,
    catch_up: CatchUp = "latest",
    catch_up_window: timedelta = DEFAULT_WINDOW,
) -> Cron:
    """`cron` by named fields, each a cron field (default ``"*"``, as in Celery and fluid:
    ``crontab(minute=0, hour="*/2")`` is every two hours on the hour; ``crontab(hour="*/2")``
    alone is every minute of every other hour)."""
    fields = (minute, hour, day_of_month, month, day_of_week)
    names = ("minute", "hour", "day_of_month", "month", "day_of_week")
    for name, value in zip(names, fields, strict=True):
        text = str(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, str | int)
            or not text
            or any(c.isspace() for c in text)
        ):
            return Cron(_invalid=f"crontab {name}={value!r} is not one cron field")
    return cron(
        " ".join(str(f) for f in fields),
        tz=tz,
        payload=payload,
        catch_up=catch_up,
        catch_up_window=catch_up_window,
    )


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule as `HyrexRegistry.schedules` reports it."""

    task_name: str
    schedule: str
    """`Schedule.describe`'s text."""
    catch_up: CatchUp
    next_tick: datetime
    """The first tick after now (aware UTC)."""
    last_tick: datetime | None
    """The newest tick recorded (None: it never fired)."""
    last_task_id: uuid.UUID | None
    last_task_status: TaskStatus | None


def bind_schedule(schedule: Any, definition: TaskDefinition[Any, Any]) -> Schedule:
    """``schedule`` checked for ``definition`` (`InvalidSchedule` naming the task), holding
    the JSON of its payload as the task's own validation writes it."""
    if not isinstance(schedule, Schedule):
        raise InvalidSchedule(
            f"schedule of task {definition.name}: expected every(...), cron(...) or "
            f"crontab(...), got {schedule!r}"
        )
    return schedule._bind(definition.name, definition.dump_payload)


def schedule_infos(
    scheduled: Mapping[str, TaskDefinition[Any, Any]],
    states: Mapping[str, tuple[datetime | None, uuid.UUID | None, TaskStatus | None]],
    now: datetime,
) -> list[ScheduleInfo]:
    """`HyrexRegistry.schedules`: each schedule, by task name, with its next tick after ``now``
    and its newest recorded tick (from ``states``: tick, task id, status)."""
    infos = []
    for name in sorted(scheduled):
        schedule = scheduled[name].schedule
        assert schedule is not None
        last_tick, last_id, last_status = states.get(name, (None, None, None))
        infos.append(
            ScheduleInfo(
                task_name=name,
                schedule=schedule.describe(),
                catch_up=schedule.catch_up,
                next_tick=schedule.next_after(now),
                last_tick=last_tick,
                last_task_id=last_id,
                last_task_status=last_status,
            )
        )
    return infos


__all__ = [
    "CatchUp",
    "Cron",
    "Every",
    "Schedule",
    "ScheduleInfo",
    "cron",
    "crontab",
    "every",
]
