"""Cron expressions, behind one small interface: the only module that imports cronsim.

cronsim (maintained, typed, no dependencies) follows Debian's cron/cronie, DST included:

- an expression whose minute and hour fields are both fixed (``30 2 * * *``) is matched on the
  wall clock of its zone. A wall time the spring-forward gap skips runs at the first minute that
  exists after it (02:30 on a day the clocks jump from 02:00 to 03:00 runs at 03:00); a wall
  time the fall-back repeats runs once, at its first occurrence (summer time).
- any other expression (``0 * * * *``, ``*/15 * * * *``) is matched on the real instants: each
  existing wall time that matches runs, so the repeated hour of a fall-back runs twice (it is two
  hours) and the skipped hour of a spring-forward does not run (it does not exist).

Only the five standard fields are accepted (minute hour day-of-month month day-of-week, with
names, ranges, steps, ``L``, ``W`` and ``#`` as cronsim knows them), plus the macros
``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight`` and ``@hourly``.
Seconds are `every`'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronProblem(ValueError):
    """An expression or zone cronsim cannot use; the message says why."""


def normalize(expression: str) -> str:
    """The five-field form of ``expression`` (macros expanded, blanks collapsed)."""
    text = " ".join(expression.split())
    return MACROS.get(text.lower(), text)


@lru_cache(maxsize=256)
def zone(key: str) -> tzinfo:
    """The named IANA zone (UTC as `datetime.UTC`, which cronsim treats without DST rules)."""
    if key == "UTC":
        return UTC
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronProblem(
            f"unknown time zone {key!r}; name an IANA zone such as 'Europe/Paris'"
        ) from None


@lru_cache(maxsize=256)
def check(expression: str, tz: str) -> None:
    """Raise `CronProblem` unless ``expression`` (normalized) in zone ``tz`` ever fires."""
    fields = expression.split()
    if len(fields) != 5:
        raise CronProblem(
            f"cron expression {expression!r} has {len(fields)} fields; write the five fields "
            "'minute hour day-of-month month day-of-week' (e.g. '*/5 * * * *') or a macro "
            f"({', '.join(sorted(MACROS))})"
        )
    start = datetime(2000, 1, 1, tzinfo=zone(tz))
    try:
        next(CronSim(expression, start))
    except CronSimError as exc:
        raise CronProblem(f"bad cron expression {expression!r}: {exc}") from None
    except StopIteration:
        raise CronProblem(f"cron expression {expression!r} never fires") from None


def after(expression: str, tz: str, t: datetime) -> Iterator[datetime]:
    """The ticks strictly after ``t`` (aware), in order, as aware UTC datetimes; lazy, endless.

    cronsim walks the wall clock of a fixed-time expression without the fold, so it may
    return the first occurrence of a repeated wall time that lies before ``t`` when ``t`` is in
    the repeated hour: such ticks are dropped here, keeping the sequence strictly after ``t``.
    """
    local = t.astimezone(zone(tz))
    for tick in CronSim(expression, local):
        as_utc = tick.astimezone(UTC)
        if as_utc > t:
            yield as_utc


MIN_PERIOD = timedelta(minutes=1)
"""Cron ticks are at least a minute apart (no seconds field)."""
