"""A run row's times: when its attempt was claimed, when its body really began, when it ended;
and a dead worker's claims that never began are undone, not recorded as lost attempts."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import psycopg

from hyrex_like import HyrexRegistry
from hyrex_like.db import WorkerQueries

from .helpers import done, query, wait_until, worker_ids


def _run_times(database_url: str, schema: str, task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        schema,
        "SELECT attempt_number, status, claimed_at, started_at, finished_at FROM task_run"
        " WHERE task_id = %s ORDER BY attempt_number",
        (task_id,),
    )


def test_completed_and_failed_runs_are_claimed_then_started_then_finished(wapp, app_worker):
    handle = wapp.fail_first.send({"n": 1})  # attempt 1 raises, attempt 2 returns
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    runs = handle.task_runs
    assert [r.status for r in runs] == ["failed", "completed"]
    for r in runs:
        assert r.claimed_at is not None and r.started_at is not None
        assert r.finished_at is not None
        assert r.claimed_at <= r.started_at <= r.finished_at, r
    assert w.stop() == 0


def test_a_timed_out_run_starts_when_its_body_began_not_when_it_was_claimed(wapp, app_worker):
    # Sent before the worker starts: one claim takes both, and the one executor runs the nap
    # first while the other waits behind it.
    nap = wapp.nap.send({"n": 1, "seconds": 2.0})
    slow = wapp.too_slow.send({"n": 2})  # timeout 1 s, one retry
    w = app_worker("--processes", "1")
    assert done(nap, 30).status == "completed"
    assert done(slow, 30).status == "failed"
    [napped] = nap.task_runs
    first = slow.task_runs[0]
    assert first.status == "timed_out"
    assert first.claimed_at is not None and first.started_at is not None
    assert first.finished_at is not None and napped.finished_at is not None
    assert first.claimed_at <= first.started_at
    assert first.started_at >= napped.finished_at  # it began when the nap had ended
    ran = (first.finished_at - first.started_at).total_seconds()
    assert 1.0 <= ran < 2.5, ran  # its timeout, not the wait behind the nap as well
    assert w.stop() == 0


def test_a_killed_worker_loses_the_attempt_it_began_and_undoes_the_claims_it_never_began(
    wapp, app_worker, out_dir, database_url, schema
):
    """SIGKILL a worker whose one executor runs a long task while other claimed tasks wait
    behind it: the rescuer closes the begun attempt as lost (its attempt counts, not as the
    task's failure) and hands the others back as never claimed; a second worker runs all."""
    first = app_worker("--processes", "1", "--heartbeat-interval", "0.5")
    # Seen to be quick, these two go to an executor in one batch next time.
    (out_dir / "release-100").touch()
    done(wapp.until_released.send({"n": 100}), 30)
    done(wapp.record.send({"n": 100}), 30)
    with psycopg.connect(database_url) as conn:  # one commit: one claim sees all four
        long = wapp.until_released.send({"n": 0}, conn=conn)  # runs until released
        waiting = [wapp.record.send({"n": n}, conn=conn) for n in range(1, 4)]

    def begun_and_held() -> list[uuid.UUID]:
        """The waiting tasks claimed and not begun, once the long one's start is written."""
        rows = query(
            database_url,
            schema,
            "SELECT t.id, r.started_at IS NOT NULL FROM task AS t"
            " JOIN task_run AS r ON r.task_id = t.id AND r.attempt_number = t.attempt_count"
            " WHERE t.status = 'running' AND t.id = ANY(%s)",
            ([long.id, *(h.id for h in waiting)],),
        )
        if (long.id, True) not in rows:
            return []
        return [task_id for task_id, began in rows if task_id != long.id and not began]

    held = wait_until(begun_and_held, 20, what="a start written while others wait unbegun")
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    (out_dir / "release-0").touch()  # attempt 2 returns at once

    second = app_worker("--processes", "1", "--stale-after", "3", "--heartbeat-interval", "0.5")
    for h in [long, *waiting]:
        assert done(h, 30).status == "completed"
    first_id, second_id = worker_ids(database_url, schema)
    assert [(r.attempt_number, r.status, r.worker_id) for r in long.task_runs] == [
        (1, "lost", first_id),
        (2, "completed", second_id),
    ]
    assert long.task_runs[0].started_at is not None
    assert (long.attempt_count, long.row.failure_count) == (2, 0)
    for h in waiting:
        # held unbegun when the worker died (or handed back before): one run, on the second
        assert [(r.attempt_number, r.status, r.worker_id) for r in h.task_runs] == [
            (1, "completed", second_id)
        ], (h.id, h.id in held)
        assert (h.attempt_count, h.row.failure_count, h.last_error) == (1, 0, None)
    assert "lost_tasks_requeued" in second.log()
    assert second.stop() == 0


def test_the_rescue_tells_begun_attempts_from_claims_that_never_began(
    registry: HyrexRegistry, database_url: str
) -> None:
    """One statement, no workers: a stale worker's run with a start is closed as lost, one
    without is deleted and its task's attempt count restored; only this worker's open runs are
    marked as started."""
    registry.migrate()
    schema = registry.store.schema
    ghost, other = uuid.uuid4(), uuid.uuid4()
    begun, unbegun, foreign = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with registry.store.connect(worker=True) as conn:
        conn.execute(
            "INSERT INTO worker (id, hostname, pid, processes, heartbeat_at)"
            " VALUES (%s, 'ghost', 1, 1, now() - interval '1 hour'),"
            " (%s, 'other', 2, 1, now())",
            (ghost, other),
        )
        for task_id, owner in ((begun, ghost), (unbegun, ghost), (foreign, other)):
            conn.execute(
                "INSERT INTO task (id, task_name, queue, args, status, attempt_count,"
                " failure_count, worker_id, last_error)"
                " VALUES (%s, 't', 'q', '{}', 'running', 2, 1, %s, '{\"type\": \"E\"}')",
                (task_id, owner),
            )
            conn.execute(
                "INSERT INTO task_run (task_id, attempt_number, status, worker_id)"
                " VALUES (%s, 1, 'failed', %s), (%s, 2, 'running', %s)",
                (task_id, owner, task_id, owner),
            )
        # the ghost marks both of its own and the other worker's task: only its own begin
        marked = WorkerQueries.mark_started(
            conn, ghost, [(begun, 2, 1_800_000_000.0), (foreign, 2, 1_800_000_000.0)]
        )
        assert marked == 1
        assert WorkerQueries.rescue(conn, 60.0) == (1, 2)
        conn.commit()
    tasks = query(
        database_url,
        schema,
        "SELECT id, status, attempt_count, failure_count, worker_id, last_error->>'type'"
        " FROM task ORDER BY id",
    )
    assert sorted(tasks) == sorted(
        [
            (begun, "queued", 2, 1, None, "WorkerLost"),
            (unbegun, "queued", 1, 1, None, "E"),
            (foreign, "running", 2, 1, other, "E"),
        ]
    )
    runs = query(
        database_url,
        schema,
        "SELECT task_id, attempt_number, status, extract(epoch FROM started_at)::float8"
        " FROM task_run ORDER BY task_id, attempt_number",
    )
    assert sorted(runs) == sorted(
        [
            (begun, 1, "failed", None),
            (begun, 2, "lost", 1_800_000_000.0),
            (unbegun, 1, "failed", None),
            (foreign, 1, "failed", None),
            (foreign, 2, "running", None),
        ]
    )
