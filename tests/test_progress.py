"""``get_hyrex_context().update_progress(...)``: sent by the executor, written coalesced by the
worker's progress writer, read as ``handle.progress``; with real workers and PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry, PayloadNotSerializable, get_hyrex_context
from hyrex_like.db import WorkerQueries
from hyrex_like.worker.progress import GIVE_UP_PASSES, ProgressWriter
from hyrex_like.worker.protocol import PROGRESS

from .helpers import APPS, ROOT, query, wait_until

APP = """
import asyncio
import math
import os
import time

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


@hy.task
def report_and_wait(gate: str) -> str:
    ctx = get_hyrex_context()
    ctx.update_progress({"done": 1, "total": 2, "kind": "sync"})
    _wait_for(gate)
    ctx.update_progress({"done": 2, "total": 2, "kind": "sync"})
    return "ok"


@hy.task
async def areport_and_wait(gate: str) -> str:
    ctx = get_hyrex_context()
    ctx.update_progress({"done": 1, "total": 2, "kind": "async"})
    while not os.path.exists(gate):
        await asyncio.sleep(0.01)
    ctx.update_progress({"done": 2, "total": 2, "kind": "async"})
    return "ok"


@hy.task
def count_to(n: int) -> float:
    ctx = get_hyrex_context()
    began = time.monotonic()
    for i in range(1, n + 1):
        ctx.update_progress({"done": i, "total": n})
    return time.monotonic() - began


@hy.task(max_retries=0)
def bad_progress() -> None:
    get_hyrex_context().update_progress({"rate": math.nan})


@hy.task
def report_locally(n: int) -> object:
    ctx = get_hyrex_context()
    ctx.update_progress({"done": n})
    return ctx.progress
"""


@pytest.fixture
def progress_app(tmp_path: Path, worker: Any) -> Any:
    """Write the app above to ``tmp_path``; return a function starting a worker on it."""
    (tmp_path / "progress_app.py").write_text(APP)
    path = os.pathsep.join([str(tmp_path), str(APPS), str(ROOT)])

    def start(*args: str) -> Any:
        return worker("progress_app:hy", *args, env={"PYTHONPATH": path})

    return start


def _progress(registry: HyrexRegistry, task_id: uuid.UUID) -> Any:
    return registry.get_handle(task_id).progress


@pytest.mark.parametrize("task", ["report_and_wait", "areport_and_wait"])
def test_progress_is_visible_while_the_task_runs_and_its_last_value_after(
    registry: HyrexRegistry, progress_app: Any, tmp_path: Path, task: str
) -> None:
    gate = tmp_path / f"gate-{task}"
    handle = registry.send(task, str(gate))
    assert handle.progress is None
    progress_app("--processes", "1")
    kind = "async" if task.startswith("a") else "sync"
    first = {"done": 1, "total": 2, "kind": kind}
    wait_until(lambda: _progress(registry, handle.id) == first, 30, what="first progress")
    assert handle.refresh().status == "running"
    assert handle.progress == first
    gate.touch()
    assert handle.wait(60).result == "ok"
    # the last value is written with the outcome: there as soon as the task reads completed
    assert handle.progress == {"done": 2, "total": 2, "kind": kind}


def _count_progress_writes(database_url: str, schema: str) -> None:
    """A trigger counting every row update that sets task.progress (test-side only)."""
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"SET search_path = {schema}")
        c.execute("CREATE TABLE progress_writes (task_id uuid, progress jsonb)")
        c.execute(
            "CREATE FUNCTION count_progress() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO progress_writes VALUES (NEW.id, NEW.progress); RETURN NEW; END $$"
        )
        c.execute(
            "CREATE TRIGGER count_progress AFTER UPDATE OF progress ON task "
            "FOR EACH ROW EXECUTE FUNCTION count_progress()"
        )


def test_ten_thousand_reports_coalesce_into_a_few_writes_ending_with_the_last(
    registry: HyrexRegistry, progress_app: Any, database_url: str, schema: str
) -> None:
    small = registry.send("count_to", 100)
    big = registry.send("count_to", 10_000)
    _count_progress_writes(database_url, schema)
    progress_app("--processes", "1")
    assert small.wait(60).status == "completed"
    assert small.progress == {"done": 100, "total": 100}  # (written with the outcome)
    seconds = big.wait(60).result
    assert big.progress == {"done": 10_000, "total": 10_000}
    writes = query(
        database_url, schema, "SELECT count(*) FROM progress_writes WHERE task_id = %s", (big.id,)
    )[0][0]
    # at most one write per half second of reporting, plus the finish (with the last value)
    assert 1 <= writes <= 3 + seconds / 0.5, (writes, seconds)


def test_a_value_json_cannot_hold_fails_the_attempt_naming_the_task(
    registry: HyrexRegistry, progress_app: Any
) -> None:
    handle = registry.send("bad_progress")
    progress_app("--processes", "1")
    handle.wait(60)
    assert handle.status == "failed"
    error = handle.last_error
    assert error is not None
    assert error["type"] == "PayloadNotSerializable"
    assert "task bad_progress reported progress" in error["message"]
    assert "$.rate is nan" in error["message"]
    assert handle.progress is None


def test_a_direct_call_keeps_progress_on_its_context_and_writes_nothing(
    registry: HyrexRegistry,
) -> None:
    @registry.task
    def local_report(n: int) -> Any:
        ctx = get_hyrex_context()
        assert ctx.is_local
        ctx.update_progress({"done": n})
        ctx.update_progress({"done": n + 1})
        return ctx.progress

    assert local_report(1) == {"done": 2}
    with pytest.raises(PayloadNotSerializable, match="task bad_local reported progress"):

        @registry.task
        def bad_local() -> None:
            get_hyrex_context().update_progress({"s": "a\x00b"})

        bad_local()


# ---------------------------------------------------------------- the writer, driven by hand


class _Log:
    """Records the events a service logs."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append(event)


class _Handle:
    """What the writer reads of an executor handle: its deque of progress items."""

    def __init__(self) -> None:
        self.progress: deque[tuple[Any, ...]] = deque()


def _row(database_url: str, schema: str, task_id: uuid.UUID) -> tuple[Any, ...]:
    sql = "SELECT progress, progress_attempt FROM task WHERE id = %s"
    return query(database_url, schema, sql, (task_id,))[0]


def _set_attempt(database_url: str, schema: str, task_id: uuid.UUID, attempt: int) -> None:
    """Make the row look as if attempt ``attempt`` had started and runs (test-side setup)."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "UPDATE task SET attempt_count = %s, status = 'running' WHERE id = %s",
            (attempt, task_id),
        )


def _writer(registry: HyrexRegistry, handle: _Handle, connect: Any = None) -> ProgressWriter:
    return ProgressWriter(
        connect or (lambda: registry.store.connect(worker=True)),
        [handle],  # type: ignore[list-item]
        _Log(),
    )


def test_a_late_value_of_an_earlier_attempt_never_covers_a_newer_attempts(
    registry: HyrexRegistry, database_url: str, schema: str
) -> None:
    task_id = registry.send("stale", 1).id
    _set_attempt(database_url, schema, task_id, 2)  # attempt 2 started
    handle = _Handle()
    writer = _writer(registry, handle)
    try:
        key = task_id.bytes
        handle.progress.append((PROGRESS, key, 2, json.dumps({"attempt": 2})))
        writer.run_once()
        assert _row(database_url, schema, task_id) == ({"attempt": 2}, 2)
        # attempt 1's last value arrives late: never written over attempt 2's
        handle.progress.append((PROGRESS, key, 1, json.dumps({"attempt": 1})))
        writer.run_once()
        assert _row(database_url, schema, task_id) == ({"attempt": 2}, 2)
        for _ in range(GIVE_UP_PASSES):  # tried again a few times, then dropped
            writer.run_once()
        assert writer.pending == {}
        assert _row(database_url, schema, task_id) == ({"attempt": 2}, 2)
        # a row another transaction holds is skipped, and written at a later pass
        with psycopg.connect(database_url, options=f"-c search_path={schema}") as holder:
            holder.execute("SELECT 1 FROM task WHERE id = %s FOR UPDATE", (task_id,))
            handle.progress.append((PROGRESS, key, 2, json.dumps({"attempt": 2, "n": 2})))
            writer.run_once()  # does not wait for the lock
            assert (key, 2) in writer.pending
            holder.rollback()
        writer.run_once()
        assert writer.pending == {}
        assert _row(database_url, schema, task_id) == ({"attempt": 2, "n": 2}, 2)
        direct = WorkerQueries.write_progress(
            writer._ensure(), [(task_id, 1, json.dumps({"attempt": 1}))]
        )
        assert direct == set()
    finally:
        writer.stop()


def test_a_database_outage_keeps_the_values_for_when_it_is_back(
    registry: HyrexRegistry, database_url: str, schema: str, db_proxy: Any
) -> None:
    task_id = registry.send("away", None).id
    _set_attempt(database_url, schema, task_id, 1)
    handle = _Handle()
    proxied = HyrexRegistry(db_proxy.url, schema=schema)
    writer = _writer(proxied, handle, lambda: proxied.store.connect(worker=True))
    try:
        db_proxy.down()
        handle.progress.append((PROGRESS, task_id.bytes, 1, json.dumps({"done": 1})))
        writer.run_once()  # logged once, nothing lost
        handle.progress.append((PROGRESS, task_id.bytes, 1, json.dumps({"done": 2})))
        writer.run_once()
        assert writer.log.events == ["progress_database_unavailable"]  # said once
        assert _row(database_url, schema, task_id) == (None, None)
        db_proxy.up()
        writer.run_once()
        assert _row(database_url, schema, task_id) == ({"done": 2}, 1)
        assert writer.pending == {}
        assert writer.log.events[-1] == "progress_database_reconnected"
    finally:
        writer.stop()
        proxied.close()


def test_a_late_value_never_covers_the_last_one_an_ended_attempt_wrote_with_its_outcome(
    registry: HyrexRegistry, database_url: str, schema: str
) -> None:
    task_id = registry.send("away", None).id
    _set_attempt(database_url, schema, task_id, 1)
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as c:
        c.execute(
            "UPDATE task SET status = 'completed', progress = '{\"done\": 10}',"
            " progress_attempt = 1 WHERE id = %s",
            (task_id,),
        )
    handle = _Handle()
    writer = _writer(registry, handle)
    try:
        # a value the attempt reported mid-run, still in the writer when the attempt ended
        handle.progress.append((PROGRESS, task_id.bytes, 1, json.dumps({"done": 7})))
        writer.run_once()
        assert _row(database_url, schema, task_id) == ({"done": 10}, 1)
    finally:
        writer.stop()
