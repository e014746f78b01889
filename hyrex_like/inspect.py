"""Looking at what the queue is doing, from the registry: ``hy.list_tasks()``,
``hy.task_detail()``, ``hy.stats()``, ``hy.throughput()`` and ``hy.list_workers()``. Reads
only: these work under a role that may only SELECT. Each is served by an index (see
docs/performance.md, "Inspection reads")."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from .db import Store
from .db import inspect as reads
from .db.queries import q
from .db.reads import read_on_pool
from .errors import InvalidTaskId, InvalidTaskOption
from .handle import TaskRun
from .states import RunStatus, TaskStatus, WorkerStatus

# A page walks at most this many rows of the primary key when its filter has no index.
DEFAULT_SCAN_BUDGET = 20_000
# ``since`` starts the walk this much earlier than the ids of its time: an id is made by the
# sender's clock just before the row's created_at (the database's), which is rechecked.
_SINCE_SLACK = timedelta(seconds=60)
_FAILED = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST})


def _json(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, TaskRun):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_json(v) for v in value]
    if hasattr(value, "to_json"):
        return value.to_json()
    return value


class _ToJson:
    def to_json(self) -> dict[str, Any]:
        """This as JSON-ready values: ids as strings, datetimes in ISO 8601."""
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskSummary(_ToJson):
    """One task, without its payload and result."""

    id: uuid.UUID
    task_name: str
    queue: str
    status: TaskStatus
    priority: int
    attempts: int
    """Runs so far (0 if never claimed)."""
    max_retries: int
    created_at: datetime
    run_after: datetime
    parent_id: uuid.UUID | None
    workflow_id: uuid.UUID | None


@dataclass(frozen=True)
class TaskPage(_ToJson):
    """A page of `hy.list_tasks`."""

    items: list[TaskSummary]
    """Newest first (ids are time-ordered UUIDv7)."""
    next: str | None
    """Pass as ``after=`` for the next (older) page; None at the end."""
    scanned_to: datetime | None
    """Set when the scan budget ended the page early (a sparse filter): the page holds every
    match down to this time, and ``next`` goes on from there."""


@dataclass(frozen=True)
class TaskDetail(_ToJson):
    """One task with everything about it: `hy.task_detail`."""

    task: TaskSummary
    payload: Any
    result: Any
    progress: Any
    last_error: dict[str, Any] | None
    runs: list[TaskRun]
    """Every attempt, oldest first."""
    parent: TaskSummary | None
    children: list[TaskSummary]
    """The tasks it sent, oldest first, at most 200."""


@dataclass(frozen=True)
class QueueStats(_ToJson):
    """One queue now, and the attempts that ended in it over the window."""

    queue: str
    ready: int
    """Queued and due now."""
    waiting: int
    """Queued to run later (a delay, or a retry's backoff)."""
    running: int
    oldest_ready_seconds: float | None
    """How long the oldest ready task has been due (None: none is ready)."""
    completed: int
    failed: int
    """Attempts that failed, timed out or were lost."""
    canceled: int
    per_minute: float
    """Attempts ended per minute over the window (every way they end)."""
    concurrency_limit: int | None
    paused: bool


@dataclass(frozen=True)
class Stats(_ToJson):
    """`hy.stats`: every queue, and how many workers run."""

    at: datetime
    window_minutes: int
    queues: list[QueueStats]
    """Sorted by name."""
    workers_alive: int


@dataclass(frozen=True)
class MinuteCount(_ToJson):
    """Attempts that ended in one queue in one minute (`hy.throughput`)."""

    minute: datetime
    queue: str
    completed: int
    failed: int
    """Attempts that failed, timed out or were lost."""


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process (``hyrex-like run-worker``) as its row says."""

    id: uuid.UUID
    hostname: str
    pid: int
    queues: list[str]
    """The queues it serves (empty: every queue)."""
    task_names: list[str]
    processes: int
    status: WorkerStatus
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    running: int
    """Tasks it holds as running now (claimed and not yet ended)."""


class InspectMethods:
    """The registry's read-only views."""

    store: Store

    def list_tasks(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        since: datetime | timedelta | None = None,
        limit: int = 50,
        after: str | uuid.UUID | None = None,
        budget: int = DEFAULT_SCAN_BUDGET,
    ) -> TaskPage:
        """Tasks newest first, filtered, ``limit`` at a time: pass a page's ``next`` as
        ``after`` for the next one. ``since``: created at or after this time (or this long
        ago). A filter without an index of its own (any status but queued, running and
        paused) reads at most ``budget`` rows per page, so a page may come back short, with
        ``scanned_to`` set and ``next`` to go on from."""
        state = _status(status)
        for label, value in (("name", name), ("queue", queue)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidTaskOption(f"{label} must be a non-empty string, not {value!r}")
        _positive("limit", limit, 10_000)
        _positive("budget", budget, 10_000_000)
        start = _since(since)
        page = reads.list_tasks(
            self.store.pool(),
            name=name,
            status=state,
            queue=queue,
            since=start,
            floor=None if start is None else _floor_id(start - _SINCE_SLACK),
            after=_cursor(after),
            limit=limit,
            budget=budget,
        )
        return TaskPage(
            items=[TaskSummary(*r) for r in page.rows],
            next=None if page.next_id is None else str(page.next_id),
            scanned_to=_id_time(page.next_id) if page.budget_ended and page.next_id else None,
        )

    def task_detail(self, task_id: str | uuid.UUID) -> TaskDetail | None:
        """One task: its row, every run (with errors and tracebacks), its parent and children;
        None if there is no such task."""
        try:
            key = task_id if isinstance(task_id, uuid.UUID) else uuid.UUID(str(task_id))
        except ValueError:
            raise InvalidTaskId(f"{task_id!r} is not a task id (a UUID)") from None
        got = reads.task_detail(self.store.pool(), key)
        if got is None:
            return None
        row, runs, parent, children = got
        return TaskDetail(
            task=TaskSummary(
                row.id,
                row.task_name,
                row.queue,
                row.status,
                row.priority,
                row.attempt_count,
                row.max_retries,
                row.created_at,
                row.run_after,
                row.parent_id,
                row.workflow_id,
            ),
            payload=row.args,
            result=row.result,
            progress=row.progress,
            last_error=row.last_error,
            runs=[TaskRun._from_row(r) for r in runs],
            parent=None if parent is None else TaskSummary(*parent),
            children=[TaskSummary(*c) for c in children],
        )

    def stats(self, window_minutes: int = 5) -> Stats:
        """Every queue (with settings, tasks queued or running, or attempts ended in the
        window): ready, waiting and running counts, the oldest ready task's age, its limit and
        pause, and the attempts that ended over the last ``window_minutes`` (counted by the
        workers, added with each heartbeat: a few seconds behind)."""
        _positive("window_minutes", window_minutes, 24 * 60)
        queues, ended, start, now, alive = reads.queue_stats(self.store.pool(), window_minutes)
        elapsed = max((now - start).total_seconds() / 60.0, 1.0)
        by_queue: dict[str, dict[RunStatus, int]] = {}
        for e in ended:
            counts = by_queue.setdefault(e.queue, {})
            counts[e.status] = counts.get(e.status, 0) + e.attempts
        out = []
        for r in queues:
            counts = by_queue.get(r.queue, {})
            out.append(
                QueueStats(
                    queue=r.queue,
                    ready=int(r.ready),
                    waiting=int(r.waiting),
                    running=int(r.running),
                    oldest_ready_seconds=(
                        None
                        if r.oldest_ready_seconds is None
                        else max(float(r.oldest_ready_seconds), 0.0)
                    ),
                    completed=counts.get(RunStatus.COMPLETED, 0),
                    failed=sum(n for s, n in counts.items() if s in _FAILED),
                    canceled=counts.get(RunStatus.CANCELED, 0),
                    per_minute=sum(counts.values()) / elapsed,
                    concurrency_limit=r.concurrency_limit,
                    paused=bool(r.paused),
                )
            )
        return Stats(at=now, window_minutes=window_minutes, queues=out, workers_alive=alive)

    def throughput(self, minutes: int = 60) -> list[MinuteCount]:
        """Attempts ended per minute and queue over the last ``minutes`` (oldest first; a
        minute in which nothing ended in a queue has no entry), as the workers counted them."""
        _positive("minutes", minutes, 24 * 60)
        merged: dict[tuple[datetime, str], list[int]] = {}
        for minute, queue, status, n in reads.minute_counts(self.store.pool(), minutes):
            counts = merged.setdefault((minute, queue), [0, 0])
            if status is RunStatus.COMPLETED:
                counts[0] += n
            elif status in _FAILED:
                counts[1] += n
        return [MinuteCount(m, qn, c, f) for (m, qn), (c, f) in merged.items()]

    def list_workers(self, recent: float = 3600.0) -> list[WorkerInfo]:
        """The workers running now, and those that stopped or were declared lost in the last
        ``recent`` seconds; newest first."""
        if (
            isinstance(recent, bool)
            or not isinstance(recent, int | float)
            or not (math.isfinite(recent) and recent >= 0)
        ):
            raise InvalidTaskOption(f"recent must be a number of seconds >= 0, not {recent!r}")

        def read(c: Any) -> list[WorkerInfo]:
            rows = c.execute(q("list_workers"), {"recent": float(recent)}).fetchall()
            return [
                WorkerInfo(
                    id=r[0],
                    hostname=r[1],
                    pid=r[2],
                    queues=list(r[3]),
                    task_names=list(r[4]),
                    processes=r[5],
                    status=WorkerStatus(r[6]),
                    started_at=r[7],
                    heartbeat_at=r[8],
                    stopped_at=r[9],
                    running=int(r[10]),
                )
                for r in rows
            ]

        return read_on_pool(self.store.pool(), read, "listing the workers")


def _status(status: TaskStatus | str | None) -> TaskStatus | None:
    if status is None:
        return None
    try:
        return TaskStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in TaskStatus)
        raise InvalidTaskOption(f"status must be one of {known}, not {status!r}") from None


def _positive(label: str, value: object, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidTaskOption(f"{label} must be a whole number from 1 to {most}, not {value!r}")


def _since(since: datetime | timedelta | None) -> datetime | None:
    if since is None:
        return None
    if isinstance(since, timedelta):
        return datetime.now(UTC) - since
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise InvalidTaskOption(f"since must be timezone-aware, not {since!r}")
        return since
    raise InvalidTaskOption(f"since must be a datetime or a timedelta, not {since!r}")


def _cursor(after: str | uuid.UUID | None) -> uuid.UUID | None:
    if after is None or isinstance(after, uuid.UUID):
        return after
    try:
        if not isinstance(after, str):
            raise ValueError(after)
        return uuid.UUID(after)
    except ValueError:
        raise InvalidTaskOption(f"after must be a task id (a page's next), not {after!r}") from None


def _floor_id(at: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of the millisecond ``at``."""
    return uuid.UUID(int=max(int(at.timestamp() * 1000), 0) << 80)


def _id_time(task_id: uuid.UUID) -> datetime:
    """When a UUIDv7 was made (its millisecond)."""
    return datetime.fromtimestamp((task_id.int >> 80) / 1000, UTC)
