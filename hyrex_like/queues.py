"""Queue controls on the registry: ``hy.queue(name, concurrency_limit=N)``, ``hy.pause_queue``,
``hy.resume_queue`` and ``hy.queues()``.

The settings live in the database (the ``queue`` table), so every worker obeys the same ones:
a paused queue is not claimed (what runs finishes; what a worker claimed and had not started
goes back), and a limited queue never has more than its limit running across all workers.
Each call writes at once and wakes the workers; none is needed at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .db import Store
from .db import queues as db_queues
from .errors import InvalidQueueSetting, InvalidTaskOption
from .task_config import check_name

MAX_CONCURRENCY_LIMIT = 1_000_000


@dataclass(frozen=True)
class QueueInfo:
    """A queue as ``hy.queues()`` lists it."""

    name: str
    concurrency_limit: int | None
    """At most this many of its tasks run at once across all workers (None: no limit)."""
    paused: bool
    paused_at: datetime | None
    queued: int
    """Tasks waiting in it: ready now, or waiting for their time (a delay, a retry's backoff)."""
    running: int
    """Tasks claimed by a worker and not yet ended (started or about to)."""


def _queue_name(name: object) -> str:
    try:
        return check_name("queue name", name)
    except InvalidTaskOption as exc:
        raise InvalidQueueSetting(str(exc)) from None


def _limit(name: str, limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidQueueSetting(
            f"the concurrency limit of queue {name!r} must be a positive int or None (no "
            f"limit), not {type(limit).__name__} {limit!r}"
        )
    if not 1 <= limit <= MAX_CONCURRENCY_LIMIT:
        raise InvalidQueueSetting(
            f"the concurrency limit of queue {name!r} must be 1 to {MAX_CONCURRENCY_LIMIT:,}, "
            f"not {limit}; pass None to remove the limit"
        )
    return limit


class QueueMethods:
    """The registry's queue controls."""

    store: Store

    def queue(self, name: str, *, concurrency_limit: int | None) -> QueueInfo:
        """Set how many tasks of queue ``name`` may run at once across every worker
        (``concurrency_limit=None`` removes the limit). Stored at once; workers obey it from
        their next claim. Returns the queue as it stands now."""
        queue = _queue_name(name)
        db_queues.set_limit(self.store, queue, _limit(queue, concurrency_limit))
        return self._queue_info(queue)

    def pause_queue(self, name: str) -> None:
        """Stop every worker from starting tasks of queue ``name``: none is claimed from now
        on, and what a worker claimed and had not started goes back. Running tasks finish.
        Pausing a paused queue changes nothing."""
        db_queues.pause(self.store, _queue_name(name))

    def resume_queue(self, name: str) -> bool:
        """Let workers claim queue ``name`` again: False if it was not paused."""
        return db_queues.resume(self.store, _queue_name(name))

    def queues(self) -> list[QueueInfo]:
        """Every queue with a setting or with tasks queued or running, by name."""
        return [
            QueueInfo(
                name=row.name,
                concurrency_limit=row.concurrency_limit,
                paused=row.paused_at is not None,
                paused_at=row.paused_at,
                queued=row.queued,
                running=row.running,
            )
            for row in db_queues.list_queues(self.store)
        ]

    def _queue_info(self, name: str) -> QueueInfo:
        for info in self.queues():
            if info.name == name:
                return info
        raise AssertionError(f"queue {name!r} was just written and is not listed")
