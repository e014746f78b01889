"""Many tasks, several workers: every task body runs exactly once."""

from __future__ import annotations

import collections
import time

from .helpers import count, query, read_events, wait_until


def test_two_workers_run_ten_thousand_tasks_exactly_once(
    wapp, app_worker, out_dir, database_url, schema
):
    total = 10_000
    for start in range(0, total, 2_000):
        wapp.record.send_many([{"n": n} for n in range(start, start + 2_000)])
    t0 = time.monotonic()
    workers = [app_worker("--processes", "2") for _ in range(2)]
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") == total,
        240,
        interval=0.5,
        what="all tasks to complete",
    )
    elapsed = time.monotonic() - t0
    for w in workers:
        assert w.stop() == 0
    ran = collections.Counter(e["n"] for e in read_events(out_dir, "record"))
    assert len(ran) == total
    assert [n for n, times in ran.items() if times > 1] == []
    assert count(database_url, schema, "true", table="task_run") == total
    assert count(database_url, schema, "status = 'completed'", table="task_run") == total
    assert count(database_url, schema, "attempt_count <> 1") == 0
    # both workers took part (neither sat idle while the other did everything)
    per_worker = query(
        database_url, schema, "SELECT worker_id, count(*) FROM task_run GROUP BY worker_id"
    )
    assert len(per_worker) == 2, per_worker
    assert min(n for _, n in per_worker) > total * 0.1, per_worker
    print(f"{total} tasks in {elapsed:.1f}s with 2 workers x 2 processes")
