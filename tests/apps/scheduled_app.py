"""An app with a few scheduled tasks (and one without), for the scheduler's CLI and worker
tests: `hyrex-like run-worker scheduled_app:hy`, `run-scheduler scheduled_app:hy`,
`schedules scheduled_app:hy`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, cron, every, get_hyrex_context

hy = HyrexRegistry()


class Report(BaseModel):
    kind: str


@hy.task(schedule=every(timedelta(seconds=1)))
def beat() -> str | None:
    """Fires every second; returns its tick time."""
    tick = get_hyrex_context().scheduled_for
    return None if tick is None else tick.isoformat()


@hy.task(schedule=cron("0 3 * * *", tz="Europe/Paris", payload={"kind": "daily"}))
def nightly_report(report: Report) -> str:
    return report.kind


@hy.task(schedule=every(timedelta(hours=1), catch_up="all"), queue="hourly", priority=8)
def hourly() -> None:
    pass


@hy.task
def by_hand() -> None:
    """Not scheduled."""
