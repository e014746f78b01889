"""Start marks: which running attempts' starts the completer writes, so that a rescuer can tell
an attempt whose body began (closed as lost) from a claim that never started (undone).

A task that ends before its mark is due needs none: its result carries its start. Only heads
that have run `MARK_AFTER` seconds are marked, each once, riding on the completer's rounds.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable

from .protocol import Job

Mark = tuple[uuid.UUID, int, float]  # task id, attempt, when its body began (epoch seconds)

MARK_AFTER = 0.2
"""Seconds a body runs before its start is written (`mark_runs_started`). A shorter task never
needs it, so short tasks cost no extra write; a longer one costs one row in one statement of a
round. A whole-worker crash undoes, rather than records as lost, an attempt begun less than
about this long (plus a loop turn) before it."""


class StartMarks:
    """The marks due, and those written (forgotten once their head has ended)."""

    def __init__(self, running_heads: Callable[[], list[tuple[Job, float]]]) -> None:
        self._running_heads = running_heads  # each running attempt, with its start (monotonic)
        self._marked: set[tuple[uuid.UUID, int]] = set()

    def due(self) -> list[Mark]:
        """Heads running for `MARK_AFTER` seconds or more whose start is not written yet."""
        heads = self._running_heads()
        if not heads:
            self._marked.clear()
            return []
        now = time.monotonic()
        wall = time.time() - now  # monotonic -> epoch seconds
        keep: set[tuple[uuid.UUID, int]] = set()
        due: list[Mark] = []
        for job, began in heads:
            key = (job.task_id, job.attempt)
            if key in self._marked:
                keep.add(key)
            elif now - began >= MARK_AFTER:
                due.append((job.task_id, job.attempt, wall + began))
        self._marked = keep  # forget heads that have ended
        return due

    def next_due(self) -> float:
        """When a running head becomes due for its mark (monotonic; inf: none)."""
        return min(
            (
                began + MARK_AFTER
                for job, began in self._running_heads()
                if (job.task_id, job.attempt) not in self._marked
            ),
            default=math.inf,
        )

    def written(self, marks: Iterable[Mark]) -> None:
        self._marked.update((task_id, attempt) for task_id, attempt, _ in marks)
