"""How long tasks run, as this worker has seen them: how many jobs may wait behind a running one.

A job sent to a busy executor waits for everything ahead of it there. The horizon (the
``busy_after`` option) bounds that wait: a batch takes jobs while the work expected ahead of the
next one stays under it, so tiny tasks still go in full batches (one pipe round trip for many)
while long ones go one at a time. Each task name's run time is a moving average of its
attempts; a name not seen yet counts as the worker-wide average, and before any result as
instant (full batches, as with no pacing: a long one among them is taken back, see
`executors`). Claims are sized by the worker-wide average (`depth`): the names of unclaimed
tasks are unknown.

The averages are geometric (a moving average of the logarithm): a tiny task preempted for a few
milliseconds on a busy machine moves its average by a factor of ~3, not ~100 (an arithmetic
average shrank the batches of 20 us tasks and cut the throughput of the tuned drain), while a
task that turns long is seen as long within ~5 attempts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice

from .protocol import Job

ALPHA = 0.2
"""Weight of the newest attempt in each moving average."""
FLOOR = 1e-6  # seconds: a run time the clock saw as 0 (the logarithm needs more)


class Pace:
    """Run times seen so far, and the batch sizes they allow."""

    def __init__(self, horizon: float, prefetch: int) -> None:
        self.horizon = horizon
        self.prefetch = prefetch
        self.run_time: dict[str, float] = {}  # by task name
        self.overall: float | None = None  # every task, for claims
        # With async tasks side by side: how many of a task one executor runs at once. The
        # run times kept are then per lane (a run time divided by it): the pace jobs start at.
        self.lanes: Callable[[str], int] | None = None

    def observe(self, task_name: str, seconds: float) -> None:
        """An attempt of ``task_name`` ran for ``seconds``."""
        seconds = max(FLOOR, seconds)
        if self.lanes is not None:
            seconds /= self.lanes(task_name)
        seen = self.run_time.get(task_name)
        self.run_time[task_name] = seconds if seen is None else seen * (seconds / seen) ** ALPHA
        overall = self.overall
        self.overall = seconds if overall is None else overall * (seconds / overall) ** ALPHA

    def depth(self) -> int:
        """Jobs per executor that start within the horizon, at the worker-wide pace (with
        async lanes: as many as an executor holds, see `Balancer.cap`)."""
        if (
            self.lanes is not None
            or self.overall is None
            or self.overall * self.prefetch < self.horizon
        ):
            return self.prefetch
        return max(1, min(self.prefetch, math.ceil(self.horizon / self.overall)))

    def ahead(self, held: Iterable[Job], elapsed: float) -> float:
        """Seconds of work expected in ``held`` (an executor's jobs, its head running for
        ``elapsed`` seconds), counted up to the horizon."""
        run_time = self.run_time
        horizon = self.horizon
        unknown = self.overall or 0.0
        total = -elapsed
        for job in held:
            total += run_time.get(job.task_name, unknown)
            if total >= horizon:
                break
        return max(0.0, total)

    def fit(self, ready: Iterable[Job], room: int, ahead: float) -> int:
        """How many of the first ``room`` of ``ready`` to send to an executor with ``ahead``
        seconds of work already queued: while the next one would start within the horizon
        (so at least one if it has nothing queued)."""
        run_time = self.run_time
        horizon = self.horizon
        unknown = self.overall or 0.0
        count = 0
        for job in islice(ready, room):
            if ahead >= horizon:
                break
            ahead += run_time.get(job.task_name, unknown)
            count += 1
        return count
