"""Retention: `hyrex_like.db.admin.prune` (the CLI's `prune`) and the worker's `Retention`
delete old finished tasks and their runs in small batches, and nothing else."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry
from hyrex_like.db.admin import PruneWalk, prune
from hyrex_like.states import TASK_FINAL, TaskStatus
from hyrex_like.worker.retention import Retention

DAY = 86_400.0
ALL_FINAL = sorted(TASK_FINAL)


@pytest.fixture
def db(registry: HyrexRegistry) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection on the test's migrated schema."""
    registry.migrate()
    with registry.store.connect() as conn:
        yield conn


def add(
    db: psycopg.Connection[Any],
    n: int,
    status: str,
    *,
    age: float = 2 * DAY,
    parent: uuid.UUID | None = None,
    runs: int = 1,
) -> list[uuid.UUID]:
    """``n`` tasks in ``status``, finished ``age`` seconds ago if final, with ``runs`` runs."""
    final = status in TASK_FINAL
    ids = [
        row[0]
        for row in db.execute(
            "INSERT INTO task (id, task_name, queue, status, args, finished_at, parent_id,"
            " root_id, attempt_count)"
            " SELECT gen_random_uuid(), 'job', 'default', %(status)s, '{}'::jsonb,"
            " CASE WHEN %(final)s THEN now() - make_interval(secs => %(age)s) END,"
            " %(parent)s::uuid,"  # a task sent from inside another: its root is the parent's
            " (SELECT coalesce(p.root_id, p.id) FROM task AS p WHERE p.id = %(parent)s::uuid),"
            " %(runs)s FROM generate_series(1, %(n)s) RETURNING id",
            {"status": status, "final": final, "age": age, "parent": parent, "runs": runs, "n": n},
        ).fetchall()
    ]
    db.execute(
        "INSERT INTO task_run (task_id, attempt_number, status)"
        " SELECT id, a, 'failed'"
        " FROM unnest(%(ids)s::uuid[]) AS id, generate_series(1, %(runs)s) AS a",
        {"ids": ids, "runs": runs},
    )
    return ids


def remaining(db: psycopg.Connection[Any], ids: list[uuid.UUID]) -> tuple[int, int]:
    """How many of ``ids`` are still tasks, and how many runs they still have."""
    tasks = db.execute("SELECT count(*) FROM task WHERE id = ANY(%s)", [ids]).fetchone()
    runs = db.execute("SELECT count(*) FROM task_run WHERE task_id = ANY(%s)", [ids]).fetchone()
    assert tasks is not None and runs is not None
    return tasks[0], runs[0]


class Log:
    """A logger that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def test_prune_deletes_old_finished_tasks_and_their_runs_and_nothing_else(db):
    old = add(db, 300, "completed", runs=2) + add(db, 200, "failed", runs=3)
    old += add(db, 100, "canceled")
    kept = add(db, 50, "queued") + add(db, 50, "running")
    kept += add(db, 40, "completed", age=60) + add(db, 30, "failed", age=60)

    assert prune(db, DAY, ALL_FINAL, batch=64) == 600

    assert remaining(db, old) == (0, 0)
    assert remaining(db, kept) == (170, 170)


def test_prune_deletes_in_batches_of_at_most_batch_tasks(db):
    old = add(db, 1000, "completed")
    walk = PruneWalk(DAY, ALL_FINAL, batch=100, scan=300)
    deleted = []
    while not walk.done:
        deleted.append(walk.step(db))
    assert sum(deleted) == walk.deleted == 1000
    assert max(deleted) <= 100
    assert len([n for n in deleted if n]) >= 10
    assert remaining(db, old) == (0, 0)


def test_prune_with_statuses_keeps_tasks_in_the_others(db):
    completed = add(db, 30, "completed")
    failed = add(db, 20, "failed")
    canceled = add(db, 10, "canceled")

    assert prune(db, DAY, [TaskStatus.FAILED, TaskStatus.CANCELED]) == 30

    assert remaining(db, completed) == (30, 30)
    assert remaining(db, failed + canceled) == (0, 0)


def test_prune_keeps_the_finished_relatives_of_unfinished_tasks(db):
    [running_parent] = add(db, 1, "running")
    child_of_running = add(db, 3, "completed", parent=running_parent)
    [finished_parent] = add(db, 1, "completed")
    [queued_child] = add(db, 1, "queued", parent=finished_parent)
    loose = add(db, 5, "completed")

    assert prune(db, DAY, ALL_FINAL) == 5
    assert remaining(db, child_of_running) == (3, 3)
    assert remaining(db, [finished_parent]) == (1, 1)
    assert remaining(db, loose) == (0, 0)

    # once the relatives are done (and old), the whole family goes
    db.execute(
        "UPDATE task SET status = 'completed', finished_at = now() - interval '2 days'"
        " WHERE id = ANY(%s)",
        [[running_parent, queued_child]],
    )
    assert prune(db, DAY, ALL_FINAL) == 6
    assert remaining(db, [running_parent, finished_parent, queued_child, *child_of_running]) == (
        0,
        0,
    )


def test_prune_keeps_every_task_of_a_tree_that_still_runs(db):
    # root -> child -> grandchild (running): the root and the child are not the grandchild's
    # parent-and-child pair only; the whole tree stays until its last task has finished.
    [root] = add(db, 1, "completed")
    [child] = add(db, 1, "completed", parent=root)
    [grandchild] = add(db, 1, "running", parent=child)
    [sibling] = add(db, 1, "failed", parent=root)
    other_tree = add(db, 2, "completed")

    assert prune(db, DAY, ALL_FINAL) == 2
    assert remaining(db, [root, child, sibling]) == (3, 3)
    assert remaining(db, other_tree) == (0, 0)

    db.execute(
        "UPDATE task SET status = 'completed', finished_at = now() - interval '2 days'"
        " WHERE id = %s",
        [grandchild],
    )
    assert prune(db, DAY, ALL_FINAL) == 4
    assert remaining(db, [root, child, grandchild, sibling]) == (0, 0)


def test_prune_skips_rows_another_transaction_holds_without_waiting(db, registry):
    held = add(db, 5, "completed")
    free = add(db, 200, "completed")
    db.execute("SET lock_timeout = '5s'")  # a wait would fail the prune, not hang the test
    with registry.store.connect(autocommit=False) as other:
        other.execute("SELECT 1 FROM task WHERE id = ANY(%s) FOR UPDATE", [held])
        started = time.monotonic()
        assert prune(db, DAY, ALL_FINAL, batch=50) == 200
        elapsed = time.monotonic() - started
        other.rollback()
    assert elapsed < 5.0, elapsed
    assert remaining(db, held) == (5, 5)
    assert remaining(db, free) == (0, 0)
    assert prune(db, DAY, ALL_FINAL) == 5  # a later walk takes them


def test_store_prune_runs_on_a_connection_of_its_own(db, registry):
    old = add(db, 10, "canceled")
    assert registry.store.prune(DAY, ALL_FINAL) == 10
    assert remaining(db, old) == (0, 0)


def test_retention_keeps_within_its_budget_and_goes_on_where_it_stopped(db):
    old = add(db, 20_000, "completed")
    recent = add(db, 10, "completed", age=60)
    log = Log()
    retention = Retention(DAY, log, budget=0.05, rest=60.0)

    started = time.monotonic()
    first = retention.run_once(db, time.monotonic())
    elapsed = time.monotonic() - started
    assert 0 < first < 20_000
    assert elapsed < 0.05 + 2.0, elapsed  # the budget, plus one short statement under way
    print(f"first pass: {first} tasks in {elapsed * 1000:.0f} ms (budget 50 ms)")

    total, passes = first, 1
    while total < 20_000:
        total += retention.run_once(db, time.monotonic())
        passes += 1
        assert passes < 10_000
    assert total == 20_000 and passes > 1
    assert remaining(db, old) == (0, 0)
    assert remaining(db, recent) == (10, 10)
    assert [e for e, _ in log.events] == ["tasks_pruned"] * len(log.events)
    assert sum(fields["tasks"] for _, fields in log.events) == 20_000


def test_retention_rests_after_a_full_walk(db):
    log = Log()
    retention = Retention(DAY, log, budget=5.0, rest=60.0)
    add(db, 10, "failed")
    now = time.monotonic()
    assert retention.run_once(db, now) == 10  # the walk ended: a rest begins
    assert retention.resting_until >= now + 60.0

    later = add(db, 7, "failed")
    assert retention.run_once(db, now + 30.0) == 0  # resting: not looked at
    assert remaining(db, later) == (7, 7)
    assert retention.run_once(db, retention.resting_until) == 7
    assert retention.run_once(db, retention.resting_until) == 0  # rests again, logs nothing
    assert log.events == [("tasks_pruned", {"tasks": 10}), ("tasks_pruned", {"tasks": 7})]


def test_retention_lets_psycopg_errors_through(db, registry):
    retention = Retention(DAY, Log())
    with registry.store.connect() as conn:
        conn.close()
        with pytest.raises(psycopg.Error):
            retention.run_once(conn, time.monotonic())


def test_prune_stops_when_asked(db):
    add(db, 500, "completed")
    asked = threading.Event()
    asked.set()
    assert prune(db, DAY, ALL_FINAL, should_stop=asked.is_set) == 0


def test_prune_rests_as_long_as_its_statements_took_by_default(db, monkeypatch):
    # A prune beside busy workers keeps to about half the server's time: each step is followed
    # by a rest as long as it took, so the wall time is about twice the steps' time.
    add(db, 3000, "completed")
    step_times: list[float] = []
    step = PruneWalk.step

    def timed_step(self: PruneWalk, conn: psycopg.Connection[Any]) -> int:
        began = time.monotonic()
        try:
            return step(self, conn)
        finally:
            step_times.append(time.monotonic() - began)

    monkeypatch.setattr(PruneWalk, "step", timed_step)
    began = time.monotonic()
    assert prune(db, DAY, ALL_FINAL, batch=100) == 3000
    wall = time.monotonic() - began
    assert wall >= 1.9 * sum(step_times), (wall, sum(step_times))
    add(db, 10, "completed")
    assert prune(db, DAY, ALL_FINAL, share=1.0) == 10  # share=1.0: no rest


def test_prune_refuses_a_share_outside_zero_to_one(db):
    for share in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            prune(db, DAY, ALL_FINAL, share=share)
