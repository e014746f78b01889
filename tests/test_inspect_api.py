"""The inspection API (issue #18): ``hy.list_tasks`` (keyset pages, filters, the scan budget),
``hy.task_detail``, ``hy.stats`` and ``hy.throughput``, with real workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from hyrex_like import (
    HyrexRegistry,
    InvalidTaskId,
    InvalidTaskOption,
    QueueStats,
    TaskPage,
    TaskStatus,
)

from .helpers import Worker, done, wait_until


@pytest.fixture
def iapp(app_registry: Callable[[HyrexRegistry], HyrexRegistry]) -> Any:
    from .apps import inspect_app

    app_registry(inspect_app.hy)
    return inspect_app


def walk(hy: HyrexRegistry, **filters: Any) -> tuple[list[uuid.UUID], list[TaskPage]]:
    """Every page of a listing, following ``next`` to the end."""
    ids: list[uuid.UUID] = []
    pages: list[TaskPage] = []
    after = None
    for _ in range(1000):
        page = hy.list_tasks(after=after, **filters)
        pages.append(page)
        ids += [t.id for t in page.items]
        if page.next is None:
            return ids, pages
        after = page.next
    raise AssertionError("the listing never ended")


def queue_stats(hy: HyrexRegistry, name: str) -> QueueStats | None:
    return next((s for s in hy.stats().queues if s.queue == name), None)


def test_pages_walk_every_task_newest_first_without_duplicates_or_gaps(
    iapp: Any, registry: HyrexRegistry
) -> None:
    sent = [h.id for h in iapp.ok.send_many(list(range(120)))]
    ids, pages = walk(registry, limit=50)
    assert ids == sorted(sent, reverse=True)
    assert [len(p.items) for p in pages] == [50, 50, 20]
    assert pages[-1].next is None and all(p.scanned_to is None for p in pages)
    first = pages[0].items[0]
    assert (first.task_name, first.queue, first.status, first.attempts) == (
        "ok",
        "insp",
        TaskStatus.QUEUED,
        0,
    )
    as_json = pages[0].to_json()
    assert as_json["items"][0]["id"] == str(first.id)
    assert as_json["items"][0]["created_at"] == first.created_at.isoformat()
    # The queued variant (task_claim_idx / task_queue_idx) pages the same way.
    assert walk(registry, status="queued", limit=50)[0] == ids
    assert walk(registry, status=TaskStatus.QUEUED, queue="insp", limit=7)[0] == ids
    assert walk(registry, status="running")[0] == []


def test_a_sparse_filter_with_a_tiny_budget_still_finds_everything(
    iapp: Any, registry: HyrexRegistry
) -> None:
    wanted = []
    for k in range(60):
        iapp.ok.send(k)
        if k % 12 == 0:
            wanted.append(iapp.other.send(k).id)
    ids, pages = walk(registry, name="other", limit=3, budget=10)
    assert ids == sorted(wanted, reverse=True)
    assert any(p.scanned_to is not None for p in pages)  # the budget cut pages short
    assert all(len(p.items) <= 3 for p in pages)
    assert walk(registry, queue="nowhere", budget=10)[0] == []


def test_filters_name_status_queue_since(
    iapp: Any, registry: HyrexRegistry, worker: Callable[..., Worker]
) -> None:
    early = [iapp.ok.send(k) for k in range(3)]
    worker("inspect_app:hy", "--processes", "1")
    failed = done(iapp.boom.send(1), 60)
    assert failed.status == "failed"
    for h in early:
        done(h, 60)
    cut = failed.row.created_at
    late = [done(iapp.other.send(k), 60) for k in range(2)]
    assert [t.id for t in registry.list_tasks(status="failed").items] == [failed.id]
    completed = registry.list_tasks(status=TaskStatus.COMPLETED).items
    assert {t.id for t in completed} == {h.id for h in early + late}
    assert [t.id for t in registry.list_tasks(name="other").items] == [h.id for h in late[::-1]]
    assert registry.list_tasks(queue="insp", limit=100).items[0].id == late[-1].id
    assert registry.list_tasks(queue="elsewhere").items == []
    recent = {t.id for t in registry.list_tasks(since=cut).items}
    assert recent == {failed.id} | {h.id for h in late}
    assert len(registry.list_tasks(since=timedelta(hours=1)).items) == 6
    assert registry.list_tasks(since=cut + timedelta(hours=1)).items == []


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"status": "nope"}, "status must be one of"),
        ({"limit": 0}, "limit"),
        ({"limit": True}, "limit"),
        ({"budget": -1}, "budget"),
        ({"after": "not-a-uuid"}, "after"),
        ({"after": 7}, "after"),
        ({"name": ""}, "name"),
        ({"queue": 3}, "queue"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_options_are_refused(
    registry: HyrexRegistry, option: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidTaskOption, match=match):
        registry.list_tasks(**option)


def test_bad_naive_since_and_windows_are_refused(registry: HyrexRegistry) -> None:
    from datetime import datetime

    with pytest.raises(InvalidTaskOption, match="timezone"):
        registry.list_tasks(since=datetime(2026, 1, 1))
    with pytest.raises(InvalidTaskOption, match="window_minutes"):
        registry.stats(window_minutes=0)
    with pytest.raises(InvalidTaskOption, match="minutes"):
        registry.throughput(minutes=-5)
    with pytest.raises(InvalidTaskId):
        registry.task_detail("nope")
    assert registry.task_detail(uuid.uuid4()) is None


def test_task_detail_has_every_run_the_parent_and_the_children(
    iapp: Any, registry: HyrexRegistry, worker: Callable[..., Worker]
) -> None:
    worker("inspect_app:hy", "--processes", "1")
    flaky = done(iapp.flaky.send(7), 60)
    detail = registry.task_detail(str(flaky.id))
    assert detail is not None
    assert (detail.task.status, detail.task.attempts, detail.payload) == ("completed", 2, 7)
    assert detail.result == "ok" and detail.parent is None and detail.children == []
    assert [r.status for r in detail.runs] == ["failed", "completed"]
    assert detail.runs[0].error_type == "RuntimeError"
    assert "first attempt of 7 fails" in (detail.runs[0].error_message or "")
    assert (detail.runs[0].traceback or "").startswith("Traceback")
    as_json = detail.to_json()
    assert as_json["task"]["id"] == str(flaky.id) and as_json["runs"][1]["status"] == "completed"

    top = done(iapp.parent.send(3), 60)
    wait_until(
        lambda: len(registry.task_detail(top.id).children) == 3,  # type: ignore[union-attr]
        30,
        what="three children",
    )
    family = registry.task_detail(top.id)
    assert family is not None
    kids = family.children
    assert [k.task_name for k in kids] == ["ok"] * 3
    assert [k.id for k in kids] == sorted(k.id for k in kids)  # oldest first
    child = registry.task_detail(kids[0].id)
    assert child is not None and child.parent is not None and child.parent.id == top.id


def test_stats_counts_ready_waiting_running_and_what_ended(
    iapp: Any, registry: HyrexRegistry, worker: Callable[..., Worker]
) -> None:
    assert registry.stats().queues == []
    ready = [iapp.ok.send(k) for k in range(3)]
    iapp.ok.send(9, delay=3600)
    iapp.ok.send(10, delay=3600)
    before = queue_stats(registry, "insp")
    assert before is not None
    assert (before.ready, before.waiting, before.running) == (3, 2, 0)
    assert before.oldest_ready_seconds is not None and before.oldest_ready_seconds >= 0
    assert (before.completed, before.failed, before.per_minute, before.paused) == (0, 0, 0.0, False)
    registry.pause_queue("quiet")
    quiet = queue_stats(registry, "quiet")
    assert quiet is not None and quiet.paused and quiet.ready == 0
    assert quiet.oldest_ready_seconds is None

    key = f"release-{uuid.uuid4()}"
    held = iapp.hold.send(key)
    w = worker("inspect_app:hy", "--processes", "2")
    wait_until(
        lambda: (s := queue_stats(registry, "held")) is not None and s.running == 1,
        60,
        what="the held task running",
    )
    for h in ready:
        done(h, 60)
    failures = [done(iapp.boom.send(k), 60) for k in range(2)]
    oks = [done(iapp.ok.send(k), 60) for k in range(20)]
    assert all(h.status == "failed" for h in failures) and all(h.status == "completed" for h in oks)
    # Ended attempts reach queue_minute with the next heartbeat (every 2 s).
    after = wait_until(
        lambda: (s := queue_stats(registry, "insp")) is not None and s.completed >= 23 and s,
        15,
        what="23 completions counted",
    )
    assert after.completed == 23 and after.failed == 2 and after.canceled == 0
    assert after.ready == 0 and after.waiting == 2 and after.oldest_ready_seconds is None
    assert after.per_minute > 0
    stats = registry.stats()
    assert stats.workers_alive == 1 and [q.queue for q in stats.queues] == sorted(
        q.queue for q in stats.queues
    )
    assert stats.to_json()["queues"][0]["queue"] == stats.queues[0].queue
    minutes = [m for m in registry.throughput(10) if m.queue == "insp"]
    assert sum(m.completed for m in minutes) == 23 and sum(m.failed for m in minutes) == 2
    assert [m.minute for m in minutes] == sorted(m.minute for m in minutes)

    registry.kv.set(key, True)
    done(held, 60)
    assert w.stop() == 0
    # The final flush at stop counts the held task's completion.
    held_stats = queue_stats(registry, "held")
    assert held_stats is not None and held_stats.completed == 1 and held_stats.running == 0


def test_upkeep_prunes_day_old_tallies_and_week_old_worker_rows(
    registry: HyrexRegistry, database_url: str, schema: str
) -> None:
    import psycopg
    import structlog

    from hyrex_like.worker.retention import prune_upkeep

    registry.stats()  # migrates the schema
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as c:
        c.execute(
            "INSERT INTO queue_minute (minute, worker_id, queue, status, attempts, run_seconds) "
            "SELECT now() - make_interval(hours => h), gen_random_uuid(), 'q', 'completed', 1, 0 "
            "FROM unnest(ARRAY[1, 23, 25, 48]) AS h"
        )
        c.execute(
            "INSERT INTO worker (id, hostname, pid, processes, status, stopped_at) "
            "SELECT gen_random_uuid(), 'h', 1, 1, s, now() - make_interval(days => d) "
            "FROM (VALUES ('stopped', 8), ('lost', 9), ('stopped', 6), ('lost', 1)) AS v (s, d)"
        )
        c.execute(
            "INSERT INTO worker (id, hostname, pid, processes) "
            "VALUES (gen_random_uuid(), 'h', 2, 1)"
        )
        assert prune_upkeep(c, structlog.get_logger()) is True
        hours = c.execute("SELECT count(*) FROM queue_minute").fetchone()
        ended = c.execute("SELECT count(*) FROM worker").fetchone()
    assert hours == (2,) and ended == (3,)  # 1 h and 23 h stay; 6 d, 1 d and the running one
    assert [m.completed for m in registry.throughput(120)] == [1]
