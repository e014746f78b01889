"""The tick time reaches the task: ``get_hyrex_context().scheduled_for`` is the tick a schedule
made the task for (an aware UTC datetime), and None for every other task and for direct calls."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hyrex_like.testing import run_task
from hyrex_like.worker.protocol import Job

from .helpers import done, query, wait_until


def read_ticks(out_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The lines tests/apps/every_second_app.py's bodies wrote (optionally one kind)."""
    path = out_dir / "ticks.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def test_a_scheduled_task_sees_its_tick_time_and_a_plain_one_sees_none(
    app_registry, worker, out_dir, database_url, schema
):
    from .apps import every_second_app as app

    app_registry(app.hy)
    w = worker("every_second_app:hy", "--processes", "1", env={"HYREX_TEST_OUT": str(out_dir)})
    ticks = wait_until(
        lambda: len(read_ticks(out_dir, "tick")) >= 3 and read_ticks(out_dir, "tick"), 60
    )
    handle = app.plain.send()
    assert done(handle, 30).status == "completed"
    assert w.stop() == 0

    stored = dict(
        query(database_url, schema, "SELECT id, scheduled_for FROM task WHERE task_name = 'tick'")
    )
    for row in ticks:
        tick = stored[uuid.UUID(row["task_id"])]
        assert tick.utcoffset() == timedelta(0)
        assert row["tz"] == "UTC"  # aware, in UTC, as the context gives it
        assert row["scheduled_for"] == tick.timestamp()  # the tick time, to the microsecond
        assert row["scheduled_for"] == int(row["scheduled_for"])  # every(1 s): on the second
        assert row["started"] >= row["scheduled_for"]  # never before its tick
    assert len({r["scheduled_for"] for r in ticks}) == len(ticks)

    [plain] = read_ticks(out_dir, "plain")
    assert plain["task_id"] == str(handle.id)
    assert plain["scheduled_for"] is None
    assert handle.result["scheduled_for"] is None
    assert query(
        database_url, schema, "SELECT scheduled_for FROM task WHERE id = %s", (handle.id,)
    ) == [(None,)]


def test_direct_calls_and_run_task_have_no_tick_unless_run_task_is_given_one():
    from .apps import every_second_app as app

    assert app.tick()["scheduled_for"] is None  # a direct call: a local context, no tick
    assert app.tick()["local"] is True
    assert run_task(app.tick)["scheduled_for"] is None
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 3, 1, 9, 0, tzinfo=paris)
    row = run_task(app.tick, scheduled_for=at)
    assert row["scheduled_for"] == at.timestamp()
    assert row["tz"] == "UTC"  # given in UTC whatever zone it was passed in
    with pytest.raises(ValueError, match="timezone-aware"):
        run_task(app.tick, scheduled_for=datetime(2026, 3, 1, 9, 0))


def test_the_wire_carries_the_tick_as_epoch_seconds_and_brings_back_an_aware_utc_datetime():
    tick = datetime(2026, 11, 30, 12, 0, 1, 250_000, tzinfo=UTC)
    job = Job(uuid.uuid4(), "tick", "default", 5, "null", 1, 0, None, None, None, tick)
    wire = job.wire()
    assert wire[10] == tick.timestamp()  # a float: cheap to pickle (item 11 is the trace)
    back = Job.from_wire(wire)
    assert back == job
    assert back.scheduled_for is not None and back.scheduled_for.tzinfo is UTC
    plain = Job(uuid.uuid4(), "plain", "default", 5, "null", 1, 0, None, None, None)
    assert plain.wire()[10] is None
    assert Job.from_wire(plain.wire()).scheduled_for is None
