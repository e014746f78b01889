"""Running workflows (#16): sequences and DAGs end to end on real workers, steps as ordinary
tasks (retries, backoff, timeouts, on_error), failure, on_failure and resume, the summary
status, the durable hand-off at the SQL level (no worker) and no step body run twice.
The app is tests/apps/workflow_app.py; its bodies note each start in ``out_dir``."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hyrex_like import (
    WORKFLOW_ACTIVE,
    WORKFLOW_DONE,
    InvalidTaskId,
    TaskStatus,
    WorkflowHandle,
    WorkflowNotFound,
    WorkflowStateError,
    WorkflowStatus,
)

from .helpers import Worker, query, read_events, wait_until

APP = "workflow_app:hy"


@pytest.fixture
def wapp(app_registry: Callable[[Any], Any]) -> Any:
    """tests/apps/workflow_app.py, its registry bound to this test's schema and migrated."""
    from .apps import workflow_app

    app_registry(workflow_app.hy)
    workflow_app.hy.migrate()
    return workflow_app


@pytest.fixture
def wworker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    """Start `run-worker workflow_app:hy ARGS` with its events going to ``out_dir``."""

    def start(*args: str) -> Worker:
        return worker(APP, *args, env={"HYREX_TEST_OUT": str(out_dir)})

    return start


def step_rows(url: str, schema: str, wid: uuid.UUID) -> list[dict[str, Any]]:
    """The workflow's step task rows, in step order."""
    cols = ["step", "id", "task_name", "queue", "priority", "status", "args", "result", "attempts"]
    rows = query(
        url,
        schema,
        "SELECT workflow_step, id, task_name, queue, priority, status, args, result, "
        "attempt_count FROM task WHERE workflow_id = %s ORDER BY workflow_step",
        (wid,),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def runs(url: str, schema: str, task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """(attempt, status, error_type, started_at, finished_at) of each run of a task."""
    return query(
        url,
        schema,
        "SELECT attempt_number, status, error_type, started_at, finished_at FROM task_run "
        "WHERE task_id = %s ORDER BY attempt_number",
        (task_id,),
    )


def same_handle(a: WorkflowHandle[Any], b: WorkflowHandle[Any]) -> None:
    assert (a.id, a.name, a.status, a.current_step) == (b.id, b.name, b.status, b.current_step)
    steps_a = [(s.name, s.status, s.handle and s.handle.id) for s in a.steps]
    assert steps_a == [(s.name, s.status, s.handle and s.handle.id) for s in b.steps]


def hand_off_chain(rows: list[dict[str, Any]]) -> None:
    """Each step after the first got its predecessor's result as its args."""
    for prev, nxt in zip(rows, rows[1:], strict=False):
        assert nxt["args"] == prev["result"], (prev, nxt)


# ---------------------------------------------------------------- end to end


def test_sequence_end_to_end(
    wapp: Any, wworker: Callable[..., Worker], database_url: str, schema: str
) -> None:
    wworker("--processes", "2")
    run = wapp.archive_batch.send(wapp.Batch(n=4))
    plain = wapp.plain_seq.send({"n": 3})
    assert run.wait(timeout=60).status is WorkflowStatus.COMPLETED
    assert plain.wait(timeout=60).status is WorkflowStatus.COMPLETED
    assert run.result == "staged 6" and plain.result == "staged 3"
    assert run.current_step is None and run.finished_at is not None

    rows = step_rows(database_url, schema, run.id)
    assert [r["task_name"] for r in rows] == ["inspect", "archive", "stage"]
    assert rows[0]["args"] == {"n": 4}
    hand_off_chain(rows)
    assert [r["queue"] for r in rows] == ["default", "q1", "q2"]  # with_config(queue=)
    assert [r["priority"] for r in rows] == [1, 2, 5]  # with_config(priority=5) kept
    assert [r["priority"] for r in step_rows(database_url, schema, plain.id)] == [1, 2, 3]
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in rows)
    assert [s.status for s in run.steps] == [TaskStatus.COMPLETED] * 3
    assert [s.handle.result for s in run.steps if s.handle] == [[0, 1, 2, 3], 6, "staged 6"]

    again = wapp.hy.get_workflow(str(run.id))
    same_handle(again, run)
    assert again.result == run.result
    listed = {w.id: w for w in wapp.hy.list_workflows()}
    assert listed[run.id].status is WorkflowStatus.COMPLETED
    assert (listed[run.id].name, listed[run.id].steps) == ("archive_batch", 3)
    assert [w.id for w in wapp.hy.list_workflows(name="plain_seq")] == [plain.id]


def test_dag_end_to_end(
    wapp: Any, wworker: Callable[..., Worker], database_url: str, schema: str
) -> None:
    wworker("--processes", "2")
    run = wapp.etl.send(wapp.Batch(n=3))
    assert run.wait(timeout=60).status is WorkflowStatus.COMPLETED
    assert isinstance(run.result, wapp.Report)  # rebuilt from the stored JSON
    assert run.result == wapp.Report(total=60, count=3, label="60/3")

    rows = step_rows(database_url, schema, run.id)
    names = [r["task_name"] for r in rows]
    assert names == ["extract", "transform", "load_a", "load_b", "report"]
    by = dict(zip(names, rows, strict=True))
    assert by["transform"]["args"] == by["extract"]["result"] == [1, 2, 3]
    assert by["load_a"]["args"] == by["load_b"]["args"] == by["transform"]["result"]
    assert by["report"]["args"] == {"load_a": 60, "load_b": 3}  # the fan-in, keyed by step name
    assert [r["priority"] for r in rows] == [1, 2, 3, 3, 4]  # depth + 1
    same_handle(wapp.hy.get_workflow(run.id), run)
    assert run.on_failure_task is None
    assert [(w.id, w.status) for w in wapp.hy.list_workflows(name="etl")] == [
        (run.id, WorkflowStatus.COMPLETED)
    ]


# ---------------------------------------------------------------- steps are ordinary tasks


def test_step_retries_with_backoff_and_on_error(
    wapp: Any, wworker: Callable[..., Worker], database_url: str, schema: str, out_dir: Path
) -> None:
    wworker()
    run = wapp.flaky_seq.send(wapp.Job(n=1, fail_times=1))
    assert run.wait(timeout=60).status is WorkflowStatus.COMPLETED
    assert run.result == "finished 1"
    flaky = run.steps[1].handle
    assert flaky is not None
    done = runs(database_url, schema, flaky.id)
    assert [(r[0], r[1], r[2]) for r in done] == [
        (1, "failed", "StepFailed"),
        (2, "completed", None),
    ]
    assert (done[1][3] - done[0][4]).total_seconds() >= 0.45  # retry_backoff=0.5 applied
    errors = read_events(out_dir, "on_error")
    assert [e["type"] for e in errors] == ["StepFailed"]
    assert run.on_failure_task is None and not read_events(out_dir, "on_failure")


def test_step_timeout_fails_the_workflow(
    wapp: Any, wworker: Callable[..., Worker], database_url: str, schema: str, tmp_path: Path
) -> None:
    wworker()
    run = wapp.timeout_seq.send(wapp.Job(n=2, release=str(tmp_path / "never"), wait_seconds=60))
    assert run.wait(timeout=60).status is WorkflowStatus.FAILED
    assert run.current_step == "slow"
    slow = run.steps[1].handle
    assert slow is not None
    assert [r[1] for r in runs(database_url, schema, slow.id)] == ["timed_out"]
    assert len(step_rows(database_url, schema, run.id)) == 2  # finish never got a row


# ---------------------------------------------------------------- failure, on_failure, resume


def test_failure_on_failure_and_resume(
    wapp: Any,
    wworker: Callable[..., Worker],
    database_url: str,
    schema: str,
    out_dir: Path,
    tmp_path: Path,
) -> None:
    flag = tmp_path / "may-succeed"
    wworker()
    run = wapp.flaky_seq.send(wapp.Job(n=7, fail_until=str(flag)))
    assert run.wait(timeout=60).status is WorkflowStatus.FAILED
    assert run.current_step == "flaky" and run.done
    rows = step_rows(database_url, schema, run.id)
    assert [r["task_name"] for r in rows] == ["prepare", "flaky"]  # finish never started
    flaky_id, flaky_args = rows[1]["id"], rows[1]["args"]
    assert [r[1] for r in runs(database_url, schema, flaky_id)] == ["failed"] * 3  # 2 retries

    handler = run.on_failure_task
    assert handler is not None
    handler.wait(timeout=30)
    [failure] = wait_until(lambda: read_events(out_dir, "on_failure"), what="on_failure ran")
    assert failure["workflow_id"] == str(run.id) and failure["workflow_name"] == "flaky_seq"
    assert (failure["step"], failure["task_id"]) == ("flaky", str(flaky_id))
    assert failure["error"]["type"] == "StepFailed"
    assert str(flag) in failure["error"]["message"]

    # Resumed while the cause remains: the same row, attempts go on, a fresh retry budget.
    assert run.resume() is WorkflowStatus.FAILED
    assert run.wait(timeout=60).status is WorkflowStatus.FAILED
    assert [r[0] for r in runs(database_url, schema, flaky_id)] == [1, 2, 3, 4, 5, 6]
    wait_until(lambda: len(read_events(out_dir, "on_failure")) == 2, what="second on_failure")

    flag.touch()
    assert run.resume() is WorkflowStatus.FAILED
    assert run.wait(timeout=60).status is WorkflowStatus.COMPLETED
    assert run.result == "finished 7"
    rows = step_rows(database_url, schema, run.id)
    assert rows[1]["id"] == flaky_id and rows[1]["args"] == flaky_args
    assert [r[1] for r in runs(database_url, schema, flaky_id)][-1:] == ["completed"]
    assert len(runs(database_url, schema, flaky_id)) == 7
    hand_off_chain(rows)
    assert len(read_events(out_dir, "on_failure")) == 2  # one per failure, none for success
    with pytest.raises(WorkflowStateError, match="it is completed; only a failed or paused"):
        run.resume()


def test_resume_refused_and_unknown_ids(
    wapp: Any, wworker: Callable[..., Worker], out_dir: Path, tmp_path: Path
) -> None:
    pending = wapp.plain_seq.send(wapp.Batch(n=1))
    with pytest.raises(WorkflowStateError, match=r"cannot resume workflow plain_seq .*pending"):
        pending.resume()
    assert pending.cancel() is True
    with pytest.raises(WorkflowStateError, match="it is canceled; only a failed or paused"):
        pending.resume()

    release = tmp_path / "release"
    run = wapp.slow_seq.send(wapp.Job(n=3, release=str(release)))
    wworker()
    wait_until(lambda: read_events(out_dir, "start") and run.refresh().current_step == "slow")
    with pytest.raises(WorkflowStateError, match=r"slow_seq \(.*\): it is running"):
        run.resume()
    release.touch()
    assert run.wait(timeout=60).status is WorkflowStatus.COMPLETED

    with pytest.raises(WorkflowNotFound):
        wapp.hy.get_workflow(uuid.uuid4())
    with pytest.raises(InvalidTaskId, match="not-a-uuid"):
        wapp.hy.get_workflow("not-a-uuid")


# ---------------------------------------------------------------- summary status


def test_status_summary(
    wapp: Any, wworker: Callable[..., Worker], out_dir: Path, tmp_path: Path
) -> None:
    pending = wapp.plain_seq.send(wapp.Batch(n=2))
    assert pending.status is WorkflowStatus.PENDING and pending.status in WORKFLOW_ACTIVE
    assert pending.current_step == "inspect" and not pending.done
    first = pending.steps[0]
    assert first.status is TaskStatus.QUEUED and first.handle is not None
    assert first.handle.attempt_count == 0
    assert [s.status for s in pending.steps[1:]] == [None, None]
    canceled = wapp.plain_seq.send(wapp.Batch(n=2))
    assert canceled.cancel() is True
    assert canceled.status is WorkflowStatus.CANCELED and canceled.status in WORKFLOW_DONE
    listed = {w.id: (w.status, w.current_step) for w in wapp.hy.list_workflows()}
    assert listed[pending.id] == (WorkflowStatus.PENDING, "inspect")
    assert listed[canceled.id] == (WorkflowStatus.CANCELED, "inspect")

    release = tmp_path / "release"
    running = wapp.slow_seq.send(wapp.Job(n=4, release=str(release)))
    failing = wapp.flaky_seq.send(wapp.Job(n=5, fail_until=str(tmp_path / "never")))
    wworker("--processes", "2")
    wait_until(lambda: any(e["task"] == "slow" for e in read_events(out_dir, "start")))
    assert running.refresh().status is WorkflowStatus.RUNNING
    assert running.status in WORKFLOW_ACTIVE and running.current_step == "slow"
    assert failing.wait(timeout=60).status is WorkflowStatus.FAILED
    assert failing.status in WORKFLOW_DONE
    assert pending.wait(timeout=60).status is WorkflowStatus.COMPLETED
    release.touch()
    assert running.wait(timeout=60).status is WorkflowStatus.COMPLETED
    listed = {w.id: (w.status, w.current_step) for w in wapp.hy.list_workflows()}
    assert listed[failing.id] == (WorkflowStatus.FAILED, "flaky")
    assert listed[running.id] == (WorkflowStatus.COMPLETED, None)
    assert listed[canceled.id] == (WorkflowStatus.CANCELED, "inspect")
    assert set(WorkflowStatus) == WORKFLOW_DONE | WORKFLOW_ACTIVE
    assert WorkflowStatus.PENDING in WORKFLOW_ACTIVE and WorkflowStatus.PAUSED in WORKFLOW_DONE


# ---------------------------------------------------------------- durable hand-off (SQL)


def _connect(url: str, schema: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, options=f"-c search_path={schema}")


COMPLETE = "UPDATE task SET status = 'completed', result = %s, finished_at = now() WHERE id = %s"


def _complete(url: str, schema: str, task_id: uuid.UUID, result: Any) -> None:
    with _connect(url, schema) as c:
        c.execute(COMPLETE, (json.dumps(result), task_id))


def test_completion_queues_next_step_in_its_transaction(
    wapp: Any, database_url: str, schema: str
) -> None:
    run = wapp.etl.send(wapp.Batch(n=2))
    [extract] = step_rows(database_url, schema, run.id)
    with _connect(database_url, schema) as c:
        c.execute(COMPLETE, (json.dumps([1, 2]), extract["id"]))
        inside = c.execute(
            "SELECT task_name, args FROM task WHERE workflow_id = %s AND workflow_step = 1",
            (run.id,),
        ).fetchall()
        assert inside == [("transform", [1, 2])]  # same transaction, before the commit
        c.rollback()
    assert [r["status"] for r in step_rows(database_url, schema, run.id)] == ["queued"]
    _complete(database_url, schema, extract["id"], [1, 2])
    rows = step_rows(database_url, schema, run.id)
    assert [(r["task_name"], r["status"], r["args"]) for r in rows] == [
        ("extract", "completed", {"n": 2}),
        ("transform", "queued", [1, 2]),
    ]
    assert run.refresh().status is WorkflowStatus.RUNNING and run.current_step == "transform"


def _at_fan_in(wapp: Any, url: str, schema: str) -> tuple[WorkflowHandle[Any], dict[str, Any]]:
    """An etl run whose extract and transform were completed by SQL: load_a, load_b queued."""
    run = wapp.etl.send(wapp.Batch(n=2))
    _complete(url, schema, step_rows(url, schema, run.id)[0]["id"], [1, 2])
    _complete(url, schema, step_rows(url, schema, run.id)[1]["id"], [10, 20])
    by = {r["task_name"]: r for r in step_rows(url, schema, run.id)}
    assert set(by) == {"extract", "transform", "load_a", "load_b"}
    return run, by


def _blocked(url: str, pid: int) -> bool:
    rows = query(
        url, "public", "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
    )
    return bool(rows) and rows[0][0] == "Lock"


@pytest.mark.parametrize("first", ["load_a", "load_b"])
def test_fan_in_from_two_concurrent_transactions(
    wapp: Any, database_url: str, schema: str, first: str
) -> None:
    run, by = _at_fan_in(wapp, database_url, schema)
    second = "load_b" if first == "load_a" else "load_a"
    results = {"load_a": 30, "load_b": 2}
    one, two = _connect(database_url, schema), _connect(database_url, schema)
    errors: list[BaseException] = []
    try:
        one.execute(COMPLETE, (json.dumps(results[first]), by[first]["id"]))

        def finish_second() -> None:
            try:
                two.execute(COMPLETE, (json.dumps(results[second]), by[second]["id"]))
                two.commit()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                errors.append(exc)

        t = threading.Thread(target=finish_second)
        t.start()
        wait_until(lambda: _blocked(database_url, two.info.backend_pid), what="second waits")
        one.commit()
        t.join(30)
        assert not t.is_alive() and not errors, errors
    finally:
        one.close()
        two.close()
    rows = step_rows(database_url, schema, run.id)
    assert [r["task_name"] for r in rows].count("report") == 1
    assert rows[-1]["args"] == results and rows[-1]["status"] == "queued"


def _complete_together(url: str, schema: str, ids: dict[uuid.UUID, int]) -> None:
    """Complete these tasks from one thread each, released at the same moment."""
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def complete(task_id: uuid.UUID, value: int) -> None:
        try:
            with _connect(url, schema) as c:
                barrier.wait(10)
                c.execute(COMPLETE, (json.dumps(value), task_id))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=item) for item in ids.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_fan_in_simultaneous_completions(wapp: Any, database_url: str, schema: str) -> None:
    """Both predecessors completed at the same moment from two threads, 20 times over."""
    for _ in range(20):
        run, by = _at_fan_in(wapp, database_url, schema)
        _complete_together(database_url, schema, {by["load_a"]["id"]: 7, by["load_b"]["id"]: 8})
        rows = step_rows(database_url, schema, run.id)
        assert [r["task_name"] for r in rows][4:] == ["report"]
        assert rows[4]["args"] == {"load_a": 7, "load_b": 8}


# ---------------------------------------------------------------- exactly once


def test_no_step_body_runs_twice(
    wapp: Any, wworker: Callable[..., Worker], database_url: str, schema: str, out_dir: Path
) -> None:
    runs_ = [wapp.etl.send({"n": i % 5 + 1}) for i in range(25)]
    runs_ += [wapp.plain_seq.send({"n": i}) for i in range(25)]
    wworker("--processes", "2")
    wworker("--processes", "2")
    for run in runs_:
        assert run.wait(timeout=120).status is WorkflowStatus.COMPLETED, run
    step_ids = {
        str(r[0])
        for r in query(database_url, schema, "SELECT id FROM task WHERE workflow_id IS NOT NULL")
    }
    assert len(step_ids) == 25 * 5 + 25 * 3
    starts = Counter(e["task_id"] for e in read_events(out_dir, "start"))
    assert set(starts) == step_ids
    assert [tid for tid, n in starts.items() if n != 1] == []
    assert len({e["pid"] for e in read_events(out_dir, "start")}) >= 2  # really spread out
