"""Workers wake when the next task is due, not at their next poll: a claim that comes back
short says when the next waiting task it could run is due, and the worker claims then. Real
workers with a 30 s poll interval (so only the due time can wake them in time), a real
database; bodies note when they began (tests/apps/lifecycle_app.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .helpers import Worker, query, read_events, wait_until

BOUND = 1.0  # the issue asks for a few ms; generous on a loaded 2-core machine


@pytest.fixture
def lapp(app_registry: Callable[[Any], Any]) -> Any:
    """tests/apps/lifecycle_app.py, its registry bound to this test's schema (for sending)."""
    from .apps import lifecycle_app

    app_registry(lifecycle_app.hy)
    lifecycle_app.hy.migrate()
    return lifecycle_app


@pytest.fixture
def idle_worker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    """A worker that polls only every 30 s."""

    def start() -> Worker:
        return worker(
            "lifecycle_app:hy", "--poll-interval", "30", env={"HYREX_TEST_OUT": str(out_dir)}
        )

    return start


def send_later(task: Any, payload: dict[str, Any], seconds: float) -> tuple[Any, datetime]:
    """Send ``payload`` to run in ``seconds``. Returns the handle and the task's run_after as
    written (the row's run_after changes when the task ends)."""
    handle = task.send(payload, delay=seconds)
    return handle, handle.refresh().row.run_after


def wait_idle(w: Worker, database_url: str, schema: str) -> None:
    """The worker is up (registered and past its first claim)."""
    wait_until(lambda: "worker_started" in w.log(), 60, what="the worker to start")
    wait_until(
        lambda: query(database_url, schema, "SELECT count(*) FROM worker")[0][0] == 1,
        30,
        what="the worker row",
    )


def lateness(database_url: str, schema: str, out_dir: Path, sent: tuple[Any, datetime]) -> float:
    """How late the task's body began after its run_after (s), checking it was not claimed
    before it."""
    task_id, run_after = sent[0].id, sent[1]
    began = wait_until(
        lambda: [e for e in read_events(out_dir, "began") if e["task_id"] == str(task_id)],
        30,
        what="the delayed task to run",
    )[0]
    ((claimed_at,),) = query(
        database_url, schema, "SELECT claimed_at FROM task_run WHERE task_id = %s", (task_id,)
    )
    assert claimed_at >= run_after, f"claimed at {claimed_at}, before its run_after {run_after}"
    return float(began["t"]) - run_after.timestamp()


def test_idle_worker_starts_a_delayed_task_when_it_is_due(
    lapp, idle_worker, database_url, schema, out_dir
):
    w = idle_worker()
    wait_idle(w, database_url, schema)
    late = lateness(database_url, schema, out_dir, send_later(lapp.stamp, {"n": 1}, 2.0))
    print(f"delayed task began {late * 1000:.1f} ms after its run_after")
    assert 0 <= late < BOUND


def test_an_earlier_task_sent_later_is_woken_for_too(
    lapp, idle_worker, database_url, schema, out_dir
):
    """The worker waits for a task due in 4 s; one sent meanwhile, due sooner, starts on time."""
    w = idle_worker()
    wait_idle(w, database_url, schema)
    later = send_later(lapp.stamp, {"n": 1}, 4.0)
    sooner = send_later(lapp.stamp, {"n": 2}, 1.5)
    late_sooner = lateness(database_url, schema, out_dir, sooner)
    late_later = lateness(database_url, schema, out_dir, later)
    print(f"lateness: {late_sooner * 1000:.1f} ms, {late_later * 1000:.1f} ms")
    assert 0 <= late_sooner < BOUND
    assert 0 <= late_later < BOUND


def test_a_worker_started_after_the_send_wakes_when_the_task_is_due(
    lapp, idle_worker, database_url, schema, out_dir
):
    """No NOTIFY reaches it (it started after the send): its first claim tells it when."""
    sent = send_later(lapp.stamp, {"n": 1}, 3.0)
    w = idle_worker()
    wait_idle(w, database_url, schema)
    late = lateness(database_url, schema, out_dir, sent)
    print(f"delayed task began {late * 1000:.1f} ms after its run_after")
    assert 0 <= late < BOUND


def test_a_retry_waiting_out_its_backoff_wakes_the_worker(
    lapp, idle_worker, database_url, schema, out_dir
):
    """A task waiting for its retry (run_after in the future, as a backoff leaves it) and
    requeued by another path than this worker's own write is claimed when it is due."""
    w = idle_worker()
    wait_idle(w, database_url, schema)
    handle = lapp.stamp.send({"n": 1})
    wait_until(lambda: read_events(out_dir, "began"), 30, what="the first run")
    wait_until(lambda: handle.refresh().status == "completed", 30, what="completion")
    # Queued again as a failed attempt's backoff would leave it, by SQL (no NOTIFY), then a
    # NOTIFY-ing send of something else lets the worker's claim see the waiting task.
    ((run_after,),) = query(
        database_url,
        schema,
        "UPDATE task SET status = 'queued', finished_at = NULL, "
        "run_after = now() + interval '2 seconds' WHERE id = %s RETURNING run_after",
        (handle.id,),
    )
    other = lapp.stamp.send({"n": 2})
    wait_until(
        lambda: [e for e in read_events(out_dir, "began") if e["task_id"] == str(other.id)],
        30,
        what="the other task",
    )
    began = wait_until(
        lambda: [e for e in read_events(out_dir, "began") if e["task_id"] == str(handle.id)][1:],
        30,
        what="the retry",
    )[0]
    ((claimed_at,),) = query(
        database_url,
        schema,
        "SELECT claimed_at FROM task_run WHERE task_id = %s AND attempt_number = 2",
        (handle.id,),
    )
    assert claimed_at >= run_after, f"claimed at {claimed_at}, before its run_after {run_after}"
    late = float(began["t"]) - run_after.timestamp()
    print(f"retry began {late * 1000:.1f} ms after its run_after")
    assert late < BOUND
