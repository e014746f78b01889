"""Every inspection read (#18) is an index path on a big table: bench/inspect_plans.py at
100,000 finished tasks and a backlog of 50,000 queued ones, each read's plan custom and generic,
walked for a Seq Scan on task, task_run, queue_minute or worker (docs/performance.md, "Inspection
reads", has the 1,000,000-row run)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import inspect_plans  # noqa: E402


def test_no_inspection_read_scans_a_big_table(database_url: str, schema: str) -> None:
    inspect_plans.load(database_url, schema, 100_000, backlog=50_000)
    plans = inspect_plans.explain_all(database_url, schema)
    assert len(plans) == 2 * len(
        inspect_plans.reads({"child": None, "parent": None, "middle": None, "queued": None})
    )
    full = [(p.read, p.mode, p.seq_big) for p in plans if p.seq_big]
    assert not full, f"full scans: {full}\n{inspect_plans.table(plans)}"
    by = {(p.statement, p.mode): " ".join(p.scans) for p in plans}
    for mode in ("force_custom_plan", "force_generic_plan"):
        assert "task_pkey" in by[("inspect_tasks", mode)]
        assert "running_idx" in by[("inspect_tasks_running", mode)]
        assert "running_idx" in by[("inspect_tasks_running_in_queue", mode)]
        assert "task_workflow_step_idx" in by[("inspect_tasks_paused", mode)]
        assert "task_parent_idx" in by[("inspect_children", mode)]
        assert "queue_minute_pkey" in by[("inspect_throughput", mode)]
        assert "queue_minute_pkey" in by[("inspect_throughput_minutes", mode)]
    # A sparse page is bounded by the budget: it reads at most that many index entries.
    sparse = next(p for p in plans if p.read == "list_tasks(name=) sparse")
    assert sparse.buffers < 2_000, inspect_plans.table(plans)
    # A page of queued tasks walks the primary key down from the newest: it reads about a
    # page, not the backlog (50,000 rows, some 2,000 buffers read whole).
    for read in (
        "list_tasks(status=queued)",
        "list_tasks(status=queued, queue=)",
        "list_tasks(status=queued) page 2",
    ):
        for p in (p for p in plans if p.read == read):
            assert p.scans[0].endswith("task_pkey") or "task_pkey" in " ".join(p.scans), p
            assert p.buffers < 400, inspect_plans.table(plans)
