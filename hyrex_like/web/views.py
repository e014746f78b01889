"""What the dashboard's pages show, as plain values for the templates: reads through the
registry's inspection API, ages, pretty JSON and the throughput sparkline (SVG points computed
here, so the template only writes numbers into attributes)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import WorkerOptions
from ..durations import parse_duration
from ..errors import InvalidTaskOption
from ..inspect import MinuteCount, QueueStats, TaskPage
from ..registry import HyrexRegistry
from ..states import TASK_FINAL, TASK_RETRY_BY_HAND, TaskStatus, WorkerStatus

SPARK_MINUTES = 60
SPARK_WIDTH = 240
SPARK_HEIGHT = 40
STALE_AFTER = float(WorkerOptions.model_fields["stale_after"].default)
"""A running worker whose heartbeat is older than this is flagged stale (the default after
which other workers declare it lost)."""


def now() -> datetime:
    return datetime.now(UTC)


def age(when: datetime | None, at: datetime) -> str:
    """``when`` as an age: 42s, 7m, 3h, 2d ("-" for None)."""
    if when is None:
        return "-"
    return seconds_text(max(0.0, (at - when).total_seconds()))


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def stamp(when: datetime | None) -> str:
    """A time as UTC text to the second ("-" for None)."""
    if when is None:
        return "-"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    """JSON with two-space indents, for a ``<pre>`` (the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def parse_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


# ------------------------------------------------------------------ overview


@dataclass(frozen=True)
class Spark:
    """Two polylines (completed, failed) over the last `SPARK_MINUTES` minutes."""

    completed_points: str
    failed_points: str
    peak: int
    completed: int
    failed: int
    width: int = SPARK_WIDTH
    height: int = SPARK_HEIGHT


def sparkline(minutes: list[MinuteCount], at: datetime) -> Spark:
    """Per-minute totals over every queue (``hy.throughput()`` rows), oldest on the left."""
    start = at.replace(second=0, microsecond=0) - timedelta(minutes=SPARK_MINUTES - 1)
    done = [0] * SPARK_MINUTES
    failed = [0] * SPARK_MINUTES
    for m in minutes:
        slot = int((m.minute - start).total_seconds() // 60)
        if 0 <= slot < SPARK_MINUTES:
            done[slot] += int(m.completed)
            failed[slot] += int(m.failed)
    peak = max([1, *done, *failed])

    def points(values: list[int]) -> str:
        step = SPARK_WIDTH / (SPARK_MINUTES - 1)
        usable = SPARK_HEIGHT - 2
        return " ".join(
            f"{i * step:.1f},{SPARK_HEIGHT - 1 - v * usable / peak:.1f}"
            for i, v in enumerate(values)
        )

    return Spark(points(done), points(failed), peak, sum(done), sum(failed))


def queue_rows(hy: HyrexRegistry) -> list[QueueStats]:
    """The queues with their counts and rates over the last 5 minutes."""
    return hy.stats().queues


def throughput(hy: HyrexRegistry, at: datetime) -> Spark:
    return sparkline(hy.throughput(SPARK_MINUTES), at)


def worker_rows(hy: HyrexRegistry, at: datetime) -> list[dict[str, Any]]:
    """Each worker with its heartbeat age and whether it looks stale."""
    rows = []
    for w in hy.list_workers():
        beat = max(0.0, (at - w.heartbeat_at).total_seconds())
        rows.append(
            {
                "w": w,
                "heartbeat": seconds_text(beat),
                "stale": w.status == WorkerStatus.RUNNING and beat > STALE_AFTER,
                "queues": ", ".join(w.queues) or "every queue",
            }
        )
    return rows


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class TaskFilter:
    """The /tasks form, as given (strings, echoed back into the form) and as parsed."""

    name: str = ""
    status: str = ""
    queue: str = ""
    since: str = ""
    after: str = ""

    def query(self, **changes: str) -> dict[str, str]:
        """The non-empty fields as query parameters, with ``changes`` applied."""
        fields = {
            "name": self.name,
            "status": self.status,
            "queue": self.queue,
            "since": self.since,
            "after": self.after,
        }
        fields.update(changes)
        return {k: v for k, v in fields.items() if v}


def list_tasks(hy: HyrexRegistry, f: TaskFilter, limit: int = 50) -> TaskPage:
    """One page of ``hy.list_tasks`` for the filter; `InvalidTaskOption` for a bad value."""
    since = None
    if f.since:
        try:
            since = timedelta(seconds=parse_duration(f.since))
        except ValueError as exc:
            raise InvalidTaskOption(f"since: {exc}") from None
    return hy.list_tasks(
        name=f.name or None,
        status=f.status or None,
        queue=f.queue or None,
        since=since,
        limit=limit,
        after=f.after or None,
    )


def task_actions(status: TaskStatus) -> list[str]:
    """The actions that make sense for a task in ``status``."""
    actions = []
    if status not in TASK_FINAL:
        actions.append("cancel")
    if status in TASK_RETRY_BY_HAND:
        actions.append("retry")
    return actions


def is_final(status: TaskStatus) -> bool:
    return status in TASK_FINAL


# ------------------------------------------------------------------ workflows


def workflows_before(text: str) -> tuple[datetime, uuid.UUID] | None:
    """The ``before`` cursor of /workflows (``<created_at ISO>_<id>``); ValueError if bad."""
    if not text:
        return None
    when, _, wid = text.rpartition("_")
    created = datetime.fromisoformat(when)
    if created.tzinfo is None:
        raise ValueError("the cursor's time has no zone")
    return created, uuid.UUID(wid)


def workflow_cursor(created_at: datetime, wid: uuid.UUID) -> str:
    return f"{created_at.isoformat()}_{wid}"


def step_rows(handle: Any) -> tuple[list[dict[str, Any]], int]:
    """A workflow's steps for its page, and how many completed."""
    rows = []
    completed = 0
    for s in handle.steps:
        if s.status == TaskStatus.COMPLETED:
            completed += 1
        rows.append(
            {
                "s": s,
                "status": "not started" if s.status is None else str(s.status),
                "task_id": None if s.handle is None else s.handle.id,
                "attempts": None if s.handle is None else s.handle.attempt_count,
                "progress": None if s.progress is None else pretty(s.progress),
            }
        )
    return rows, completed
