"""The statements a worker runs over connections it owns (not pooled), and the session
settings of those connections. psycopg errors propagate, so the worker can tell a dropped
connection from a bad row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from .queries import q
from .rows import ClaimedRow, FinishedRow, _array_literal, _array_text

R = TypeVar("R", bound=ClaimedRow)

# Session settings of the worker's connections: queue tables outgrow their statistics, and the
# planner then sorts the whole queue per claim. Every worker statement is an index lookup or an
# ordered index scan by design, so steer the planner away from the rest. JIT off: a scan of a
# tiny table (the queue settings) costs 1e10 with seq scans off, which would have every claim
# compiled (~300 ms) for a statement that runs in well under a millisecond.
WORKER_PLANNER_OPTIONS = (
    "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_hashjoin=off "
    "-c enable_mergejoin=off -c enable_material=off -c jit=off"
)


WORKER_TCP_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


# The rescuer's advisory lock: this class id (b"hylr") with the schema name's hash. Two-key
# locks never collide with the one-key migration lock.
RESCUER_LOCK_CLASS = 0x68796C72


class WorkerQueries:
    """The statements a worker runs, over a connection it owns."""

    @staticmethod
    def claim(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        task_names: list[str],
        queues: list[str],
        limit: int,
        make: Callable[..., R] = ClaimedRow,  # type: ignore[assignment]
    ) -> tuple[list[R], float | None, list[str]]:
        """Claim up to ``limit`` tasks, from queues neither paused nor limited; each row made by
        ``make`` (a `ClaimedRow` or a subclass, such as the worker's `Job`). With them: when
        fewer came than asked for, in how many seconds the next waiting task it could run is
        due (None: none waits, or the claim was full); and the limited queues (not paused)
        this worker serves, which `claim_limited` claims."""
        cur = conn.execute(
            q("claim_tasks"),
            {
                "worker_id": worker_id,
                "task_names": task_names,
                "queues": queues,
                "limit": limit,
            },
            prepare=True,
        )
        rows = cur.fetchall()
        extra = rows.pop()  # the last row (see claim_tasks): id NULL
        return [make(*row[:-2]) for row in rows], extra[-2], list(extra[-1] or ())

    @staticmethod
    def claim_limited(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        task_names: list[str],
        queues: list[str],
        limit: int,
        make: Callable[..., R] = ClaimedRow,  # type: ignore[assignment]
    ) -> tuple[list[R], bool]:
        """Claim up to ``limit`` tasks from limited queues, within each queue's limit; and
        whether a queue with tasks ready was at its limit (or its lock was held too long):
        then, claim again once one of its tasks ends."""
        try:
            rows = conn.execute(
                q("claim_limited_tasks"),
                {
                    "worker_id": worker_id,
                    "task_names": task_names,
                    "queues": queues,
                    "limit": limit,
                },
                prepare=True,
            ).fetchall()
        except psycopg.errors.LockNotAvailable:
            return [], True  # (autocommit: only this statement was rolled back)
        blocked = bool(rows and rows[-1][0] is None)
        if blocked:
            rows.pop()
        return [make(*row[:-1]) for row in rows], blocked

    @staticmethod
    def finish_params(worker_id: uuid.UUID, rows: Sequence[FinishedRow]) -> dict[str, Any]:
        """``finish_runs``' parameters: one array literal per column, built by joining text
        (cheaper than psycopg's list adaptation or one JSON document). Results are JSON already;
        a JSON null is stored as SQL NULL.
        """
        return {
            "worker_id": worker_id,
            "task_ids": _array_literal([str(r.task_id) for r in rows]),
            "attempts": _array_literal([str(r.attempt) for r in rows]),
            "statuses": _array_literal([r.status for r in rows]),  # a fixed set of words
            "retryable": _array_literal(["t" if r.retryable else "f" for r in rows]),
            "results": _array_text(None if r.result == "null" else r.result for r in rows),
            "error_types": _array_text(r.error_type for r in rows),
            "error_messages": _array_text(r.error_message for r in rows),
            "tracebacks": _array_text(r.traceback for r in rows),
            # finite floats: repr is a valid float8 literal
            "started": _array_literal(
                ["NULL" if r.started_at is None else repr(r.started_at) for r in rows]
            ),
            "finished": _array_literal([repr(r.finished_at) for r in rows]),
            "progress": _array_text(r.progress for r in rows),
        }

    @staticmethod
    def finish(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, rows: Sequence[FinishedRow]
    ) -> list[tuple[uuid.UUID, str, datetime, int]]:
        cur = conn.execute(
            q("finish_runs"), WorkerQueries.finish_params(worker_id, rows), prepare=True
        )
        return [(row[0], row[1], row[2], row[3]) for row in cur.fetchall()]

    @staticmethod
    def give_back(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, items: Sequence[tuple[uuid.UUID, int]]
    ) -> int:
        cur = conn.execute(
            q("give_back_tasks"),
            {
                "worker_id": worker_id,
                "task_ids": [i[0] for i in items],
                "attempts": [i[1] for i in items],
            },
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def give_back_unknown(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID, known: Sequence[uuid.UUID]
    ) -> int:
        cur = conn.execute(q("give_back_unknown"), {"worker_id": worker_id, "known": list(known)})
        row = cur.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def mark_started(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        items: Sequence[tuple[uuid.UUID, int, float]],
    ) -> int:
        """Record when bodies still running began: (task id, attempt, epoch seconds) each.
        Returns the runs marked (only this worker's open ones)."""
        cur = conn.execute(
            q("mark_runs_started"),
            {
                "worker_id": worker_id,
                "task_ids": [i[0] for i in items],
                "attempts": [i[1] for i in items],
                "started": [i[2] for i in items],
            },
            prepare=True,
        )
        return cur.rowcount

    @staticmethod
    def register(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        hostname: str,
        pid: int,
        queues: list[str],
        task_names: list[str],
        processes: int,
    ) -> None:
        conn.execute(
            q("register_worker"),
            {
                "id": worker_id,
                "hostname": hostname,
                "pid": pid,
                "queues": queues,
                "task_names": task_names,
                "processes": processes,
            },
        )

    @staticmethod
    def heartbeat(
        conn: psycopg.Connection[Any], worker_id: uuid.UUID
    ) -> tuple[bool, list[uuid.UUID]]:
        """Whether our worker row is still ours (False: another worker declared us lost), and
        the tasks we run whose cancel was asked for."""
        row = conn.execute(q("heartbeat"), {"id": worker_id}, prepare=True).fetchone()
        if row is None:
            return False, []
        return True, list(row[1] or [])

    @staticmethod
    def stop(conn: psycopg.Connection[Any], worker_id: uuid.UUID) -> None:
        conn.execute(q("stop_worker"), {"id": worker_id})

    @staticmethod
    def record_minutes(
        conn: psycopg.Connection[Any],
        worker_id: uuid.UUID,
        counts: dict[tuple[int, str, str], list[float]],
    ) -> None:
        """Add a worker's tallies of ended attempts, ``{(minute, queue, run status): [attempts,
        run seconds]}``, to queue_minute (one statement)."""
        keys = list(counts)
        conn.execute(
            q("record_minutes"),
            {
                "worker_id": worker_id,
                "minutes": [k[0] for k in keys],
                "queues": [k[1] for k in keys],
                "statuses": [str(k[2]) for k in keys],
                "attempts": [int(counts[k][0]) for k in keys],
                "run_seconds": [float(counts[k][1]) for k in keys],
            },
        )

    @staticmethod
    def prune_minutes(conn: psycopg.Connection[Any]) -> int:
        """Delete minute tallies older than a day; returns how many rows."""
        return max(conn.execute(q("prune_queue_minutes")).rowcount, 0)

    @staticmethod
    def prune_workers(conn: psycopg.Connection[Any]) -> int:
        """Delete the rows of workers that stopped or were declared lost more than 7 days
        ago; returns how many."""
        return max(conn.execute(q("prune_workers")).rowcount, 0)

    @staticmethod
    def try_lead_rescue(conn: psycopg.Connection[Any]) -> bool:
        """Become this schema's rescuer, if no other worker is (held until ``conn`` closes)."""
        row = conn.execute(q("try_lead_rescue"), {"lock_class": RESCUER_LOCK_CLASS}).fetchone()
        return bool(row and row[0])

    @staticmethod
    def watch_client(conn: psycopg.Connection[Any]) -> None:
        """Have the server notice within ~30 s if this connection's client vanishes."""
        conn.execute(q("watch_client"))

    @staticmethod
    def release_rescue(conn: psycopg.Connection[Any]) -> None:
        conn.execute(q("release_rescue"), {"lock_class": RESCUER_LOCK_CLASS})

    @staticmethod
    def rescue(
        conn: psycopg.Connection[Any],
        stale_seconds: float,
        *,
        full: bool = True,
    ) -> tuple[int, int]:
        """Requeue tasks of workers with stale heartbeats: (workers marked lost, tasks).

        ``full`` also requeues running tasks whose worker is not running at all; that reads
        every running task, so a worker asks for it only every ``stale_seconds``.
        """
        row = conn.execute(
            q("rescue_lost_tasks"),
            {"stale_seconds": stale_seconds, "full": full},
            prepare=True,
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @staticmethod
    def insert_ticks(
        conn: psycopg.Connection[Any],
        schedule_name: str,
        ticks: Sequence[datetime],
        ids: Sequence[uuid.UUID],
        *,
        queue: str,
        priority: int,
        args_json: str,
        max_retries: int,
        timeout_seconds: float | None,
        backoff_seconds: Sequence[float],
    ) -> list[datetime]:
        """Record ``ticks`` of a schedule (its task's name) with a task each (``ids``, one per
        tick), in one statement: the tick times this call made tasks for. A tick another
        scheduler recorded first is skipped; the workers are woken when any task was made."""
        row = conn.execute(
            q("insert_schedule_ticks"),
            {
                "schedule_name": schedule_name,
                "ticks": list(ticks),
                "ids": _array_literal([str(i) for i in ids]),
                "queue": queue,
                "priority": priority,
                "args": args_json,
                "max_retries": max_retries,
                "timeout_seconds": timeout_seconds,
                "backoff_seconds": _array_literal(map(repr, backoff_seconds)),
            },
            prepare=True,
        ).fetchone()
        return [t.astimezone(UTC) for t in row[0]] if row else []

    @staticmethod
    def prune_ticks(
        conn: psycopg.Connection[Any], schedule_name: str, before: datetime, limit: int
    ) -> int:
        """Delete up to ``limit`` tick rows of a schedule older than ``before``, never its
        newest: how many were deleted."""
        cur = conn.execute(
            q("prune_schedule_ticks"),
            {"schedule_name": schedule_name, "before": before, "limit": limit},
        )
        return cur.rowcount

    @staticmethod
    def last_ticks(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, datetime]:
        """The newest tick recorded for each of these schedules (absent: none yet)."""
        rows = conn.execute(q("schedule_last_ticks"), {"names": list(names)}).fetchall()
        return {name: tick.astimezone(UTC) for name, tick in rows}

    @staticmethod
    def notify_limited(conn: psycopg.Connection[Any], channel: str) -> None:
        """Wake the workers listening on ``channel`` to claim from limited queues."""
        conn.execute(q("notify_limited"), {"channel": channel}, prepare=True)

    @staticmethod
    def listen(conn: psycopg.Connection[Any], channel: str) -> None:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    @staticmethod
    def write_progress(
        conn: psycopg.Connection[Any], items: Sequence[tuple[uuid.UUID | bytes, int, str]]
    ) -> set[uuid.UUID]:
        """Store reported progress, one (task id, attempt, JSON text) per task attempt, in one
        statement; only onto the attempt that reported it, skipping rows another transaction
        holds. Returns the ids written (the others: locked now, or their attempt is over).
        A task id may be given as its 16 bytes (as the worker's executors send it)."""
        rows = conn.execute(
            q("write_progress"),
            {
                # 32 hex digits are a valid uuid literal too (cheaper than str(UUID))
                "task_ids": _array_literal(
                    [i[0].hex() if isinstance(i[0], bytes) else str(i[0]) for i in items]
                ),
                "attempts": _array_literal([str(i[1]) for i in items]),
                "progress": _array_text(i[2] for i in items),
            },
            prepare=True,
        ).fetchall()
        return {row[0] for row in rows}
