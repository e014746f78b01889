"""Looking at what the queue is doing, from the registry: ``hy.list_workers()`` (more to come,
see docs/plans/issue-18.md). Reads only: these work under a role that may only SELECT."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .db import Store
from .db.queries import q
from .db.reads import read_on_pool
from .errors import InvalidTaskOption
from .states import WorkerStatus


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
