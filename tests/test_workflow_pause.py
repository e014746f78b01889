"""Pausing, resuming and canceling workflows (#16), real workers: a pause stops the running step
within a second (run interrupted, not counted) and holds the rest; a resume restarts it with the
same arguments. Mirrors tests/test_cancel_running.py (SIGTERM drain, missed NOTIFY, a worker
dying mid-pause). Bodies note what they do (tests/apps/workflow_pause_app.py)."""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hyrex_like import WorkflowStateError, WorkflowStatus

from .helpers import Worker, query, read_events, wait_until

PAUSE_BOUND = 1.0  # the issue: the running step is stopped within a second
STOP_BOUND = 5.0  # paths that wait for a heartbeat (as in tests/test_cancel_running.py)
FAST = ("--heartbeat-interval", "0.5", "--stale-after", "2")
Q = Callable[..., list[tuple[Any, ...]]]  # a query in the test schema


@pytest.fixture
def papp(app_registry: Callable[[Any], Any]) -> Any:
    """tests/apps/workflow_pause_app.py, its registry bound to this test's schema."""
    from .apps import workflow_pause_app

    app_registry(workflow_pause_app.hy)
    workflow_pause_app.hy.migrate()
    return workflow_pause_app


@pytest.fixture
def pworker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    """Start `run-worker workflow_pause_app:hy ARGS` with its events going to ``out_dir``."""

    def start(*args: str) -> Worker:
        return worker("workflow_pause_app:hy", *args, env={"HYREX_TEST_OUT": str(out_dir)})

    return start


@pytest.fixture
def db(database_url: str, schema: str) -> Q:
    return functools.partial(query, database_url, schema)


def step_task(db: Q, run: Any, step: int) -> tuple[Any, ...] | None:
    """(id, status, attempt_count, failure_count, args) of the step's task, None if it has none."""
    rows = db(
        "SELECT id, status, attempt_count, failure_count, args FROM task "
        "WHERE workflow_id = %s AND workflow_step = %s",
        (run.id, step),
    )
    return rows[0] if rows else None


def step_row(db: Q, run: Any, step: int) -> tuple[Any, ...]:
    assert (row := step_task(db, run, step)) is not None, f"step {step} has no task"
    return row


def step_status(db: Q, run: Any, step: int) -> str | None:
    row = step_task(db, run, step)
    return None if row is None else str(row[1])


def runs_of(db: Q, task_id: Any) -> list[tuple[Any, ...]]:
    """(attempt, status, error_type, started_at, finished_at) of each run of the task."""
    return db(
        "SELECT attempt_number, status, error_type, started_at, finished_at FROM task_run "
        "WHERE task_id = %s ORDER BY attempt_number",
        (task_id,),
    )


def events(out_dir: Path, kind: str, n: int) -> list[dict[str, Any]]:
    return [e for e in read_events(out_dir, kind) if e["n"] == n]


def wait_started(out_dir: Path, n: int, attempt: int = 1) -> dict[str, Any]:
    """The ``start`` event of the long step's body for job ``n`` at ``attempt``."""

    def started() -> list[dict[str, Any]]:
        return [e for e in events(out_dir, "start", n) if e["attempt"] == attempt]

    return wait_until(started, 60, what=f"job {n}'s long step to start (attempt {attempt})")[0]


def release(out_dir: Path, n: int) -> None:
    (out_dir / f"release-{n}").touch()


def finishes(run: Any, out_dir: Path, n: int) -> None:
    """Released, ``run`` completes with result ``n``, each of its bodies having ended once."""
    release(out_dir, n)
    completed(run)
    assert run.result == n
    once(out_dir, n, "first", "end", "last")


def completed(run: Any) -> None:
    wait_until(lambda: run.refresh().status is WorkflowStatus.COMPLETED, 60, what="the end")


def served(papp: Any, n: int, queue: str = "default") -> None:
    """A plain task sent now completes: the worker claims and runs tasks."""
    handle = papp.ping.with_config(queue=queue).send({"n": n})
    wait_until(lambda: handle.refresh().status == "completed", 60, what=f"ping {n}")


def unheard_pause(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pause ``run`` with the NOTIFY to its workers sent on a channel nobody listens on."""
    from hyrex_like.db import workflows

    monkeypatch.setattr(workflows, "control_channel", lambda schema: "hyrex_test_nobody")
    assert run.pause() is True
    monkeypatch.undo()


def once(out_dir: Path, n: int, *kinds: str) -> None:
    """Each of these bodies of job ``n`` ran exactly once."""
    assert [len(events(out_dir, k, n)) for k in kinds] == [1] * len(kinds), kinds


def test_pause_stops_the_running_step_within_a_second_and_holds_the_rest(
    papp, pworker, db, out_dir
):
    w = pworker("--processes", "1")
    run = papp.pipeline.send({"n": 1})
    wait_started(out_dir, 1)
    executors = w.executor_pids()
    assert len(executors) == 1
    task_id = step_row(db, run, 1)[0]

    began = time.monotonic()
    assert run.pause() is True

    def closed() -> bool:
        return runs_of(db, task_id)[0][1] != "running" and executors[0] not in w.executor_pids()

    wait_until(closed, 30, interval=0.005, what="the paused step's run to close")
    took = time.monotonic() - began
    print(f"running step paused in {took * 1000:.0f} ms")
    assert took < PAUSE_BOUND

    ((*closed_run, started_at, _),) = runs_of(db, task_id)
    assert closed_run == [1, "interrupted", "WorkflowPaused"] and started_at is not None
    _, status, attempts, failures, _ = step_row(db, run, 1)
    assert (status, attempts, failures) == ("paused", 1, 0)  # not counted against retries
    assert run.refresh().status is WorkflowStatus.PAUSED
    assert run.current_step == "hold"
    assert [s.status for s in run.steps] == ["completed", "paused", None]
    assert step_task(db, run, 2) is None
    assert not events(out_dir, "end", 1)
    # The executor was replaced; the worker serves other tasks and leaves the held step alone.
    served(papp, 100)
    assert w.executor_pids() and w.executor_pids() != executors
    assert step_status(db, run, 1) == "paused" and step_task(db, run, 2) is None
    assert len(events(out_dir, "start", 1)) == 1
    assert "task_paused" in w.log()


def test_a_paused_step_between_steps_is_held_not_claimed_then_resumed(papp, pworker, db, out_dir):
    """The middle step waits queued on a queue no worker serves yet; the pause holds it; a
    worker that serves that queue, idle and claiming, leaves it alone; the resume runs it."""
    pworker("--processes", "1", "--queue", "default")
    run = papp.parked.send({"n": 2})
    wait_until(lambda: step_status(db, run, 1) == "queued", 60, what="step 1 queued")
    assert run.refresh().status is WorkflowStatus.RUNNING
    assert run.pause() is True
    assert run.status is WorkflowStatus.PAUSED
    assert step_status(db, run, 1) == "paused"
    assert run.pause() is False  # paused already
    later = pworker("--processes", "1", "--queue", "later", "--poll-interval", "0.1")
    served(papp, 200, queue="later")  # it claims from "later"...
    time.sleep(0.5)  # ...and polls five more times (no condition to wait on: nothing happens)
    served(papp, 201, queue="later")
    _, status, attempts, _, _ = step_row(db, run, 1)
    assert (status, attempts) == ("paused", 0)  # ...but not the held step
    assert not events(out_dir, "start", 2)
    assert run.refresh().status is WorkflowStatus.PAUSED

    assert run.resume() is WorkflowStatus.PAUSED
    assert run.status in (WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED)
    wait_started(out_dir, 2)
    finishes(run, out_dir, 2)
    once(out_dir, 2, "start")
    assert "task_paused" not in later.log()


def test_resume_restarts_the_stopped_step_with_the_same_arguments(papp, pworker, db, out_dir):
    pworker("--processes", "1")
    run = papp.pipeline.send({"n": 3, "seconds": 1.5})
    first_start = wait_started(out_dir, 3)
    task_id = step_row(db, run, 1)[0]
    assert run.pause() is True
    wait_until(lambda: step_status(db, run, 1) == "paused", 30, what="the pause")
    assert run.resume() is WorkflowStatus.PAUSED
    with pytest.raises(WorkflowStateError, match="it is running"):
        run.resume()  # resumed already
    second_start = wait_started(out_dir, 3, attempt=2)
    assert second_start["task_id"] == first_start["task_id"] == str(task_id)  # the same row
    assert second_start["args"] == first_start["args"] == {"n": 3, "seconds": 1.5}
    finishes(run, out_dir, 3)
    assert [r[:3] for r in runs_of(db, task_id)] == [
        (1, "interrupted", "WorkflowPaused"),
        (2, "completed", None),
    ]
    _, status, attempts, failures, _ = step_row(db, run, 1)
    assert (status, attempts, failures) == ("completed", 2, 0)
    with pytest.raises(WorkflowStateError, match="completed"):
        run.pause()  # a completed workflow cannot be paused
    with pytest.raises(WorkflowStateError, match="only a failed or paused workflow"):
        run.resume()


def test_a_step_that_completes_during_the_pause_starts_its_successor_only_on_resume(
    papp, pworker, db, out_dir, monkeypatch
):
    """The worker does not hear the pause (its NOTIFY goes to a channel nobody listens on; the
    heartbeat is a minute off), so the running step completes while the workflow is paused:
    the completion is kept, its successor waits for the resume."""
    w = pworker("--processes", "1", "--heartbeat-interval", "60", "--stale-after", "120")
    run = papp.pipeline.send({"n": 4})
    wait_started(out_dir, 4)
    unheard_pause(run, monkeypatch)
    release(out_dir, 4)
    wait_until(lambda: step_status(db, run, 1) == "completed", 30, what="the step to complete")
    served(papp, 400)  # the worker goes on working...
    assert step_task(db, run, 2) is None  # ...and the successor was not started
    assert run.refresh().status is WorkflowStatus.PAUSED
    assert run.current_step == "last"
    assert run.resume() is WorkflowStatus.PAUSED
    finishes(run, out_dir, 4)
    assert "task_paused" not in w.log()


def test_cancel_stops_the_running_step_and_nothing_more_starts(papp, pworker, db, out_dir):
    w = pworker("--processes", "1")
    run = papp.pipeline.send({"n": 5})
    wait_started(out_dir, 5)
    task_id = step_row(db, run, 1)[0]
    began = time.monotonic()
    assert run.cancel() is True
    wait_until(lambda: step_status(db, run, 1) == "canceled", 30, what="the cancel")
    took = time.monotonic() - began
    print(f"running step canceled in {took * 1000:.0f} ms")
    assert took < STOP_BOUND
    assert run.refresh().status is WorkflowStatus.CANCELED
    assert run.done and run.finished_at is not None
    assert [r[:3] for r in runs_of(db, task_id)] == [(1, "canceled", "TaskCanceled")]
    served(papp, 500)  # the worker goes on; the next step never starts
    assert step_task(db, run, 2) is None
    assert not events(out_dir, "end", 5) and not events(out_dir, "last", 5)
    assert run.cancel() is False
    for refused in (run.resume, run.pause):
        with pytest.raises(WorkflowStateError, match="it is canceled"):
            refused()
    assert "task_canceled" in w.log()


def test_cancel_of_a_paused_workflow_cancels_its_held_and_queued_steps(papp, pworker, db, out_dir):
    """A paused step (it had run) and a held queued one (it had not) both end canceled."""
    pworker("--processes", "2", "--queue", "default")
    held = papp.pipeline.send({"n": 6})
    wait_started(out_dir, 6)
    waiting = papp.parked.send({"n": 7})
    wait_until(lambda: step_status(db, waiting, 1) == "queued", 60, what="step 1 queued")
    for run in (held, waiting):
        assert run.pause() is True
    wait_until(lambda: step_status(db, held, 1) == "paused", 30, what="the pause")
    assert step_status(db, waiting, 1) == "paused"
    for run in (held, waiting):
        assert run.cancel() is True
        assert run.status is WorkflowStatus.CANCELED
        assert step_status(db, run, 1) == "canceled"
        assert run.cancel() is False
        with pytest.raises(WorkflowStateError):
            run.resume()
    pworker("--processes", "1", "--queue", "later")
    served(papp, 700, queue="later")
    served(papp, 701)
    assert [r[:2] for r in runs_of(db, step_row(db, held, 1)[0])] == [(1, "interrupted")]
    assert runs_of(db, step_row(db, waiting, 1)[0]) == []
    assert step_task(db, held, 2) is None and step_task(db, waiting, 2) is None
    assert len(events(out_dir, "start", 6)) == 1 and not events(out_dir, "start", 7)


def test_quick_pause_resume_cycles_never_run_a_step_twice_at_once(papp, pworker, db, out_dir):
    """20 pause/resume cycles at random moments on a step that runs 1 s: its runs never
    overlap (nor do its bodies: each holds a file lock), and its body completes exactly once."""
    pworker("--processes", "2")
    run = papp.cycling.send({"n": 8, "seconds": 1.0})
    wait_started(out_dir, 8)
    rng = random.Random(16)
    cycles = 0
    for _ in range(20):
        time.sleep(rng.uniform(0.0, 0.25))
        try:
            assert run.pause() is True
        except WorkflowStateError:
            break  # it completed meanwhile (a 1 s stretch without a pause)
        cycles += 1
        time.sleep(rng.uniform(0.0, 0.25))
        assert run.resume() is WorkflowStatus.PAUSED
    completed(run)
    task_runs = runs_of(db, step_row(db, run, 1)[0])
    statuses = [r[1] for r in task_runs]
    print(f"{cycles} cycles; runs: {statuses}")
    assert cycles >= 5 and not read_events(out_dir, "overlap")
    once(out_dir, 8, "end", "last")
    assert statuses == ["interrupted"] * (len(statuses) - 1) + ["completed"]
    assert len(statuses) >= 3  # pauses did stop it
    for earlier, later in zip(task_runs, task_runs[1:], strict=False):
        if earlier[3] is not None and later[3] is not None:
            assert later[3] >= earlier[4], f"runs overlap: {earlier} and {later}"
    assert step_row(db, run, 1)[3] == 0  # no failure counted


def test_pauses_at_random_moments_then_resumes_run_every_step_exactly_once(
    papp, pworker, db, out_dir
):
    """40 short workflows, each paused at a different moment (queued, mid-step, during a
    hand-off, done), then resumed: every one completes and every step body completed once."""
    pworker("--processes", "2")
    rng = random.Random(1616)
    outcomes: dict[int, str] = {}
    runs = {}
    for n in range(100, 140):
        runs[n] = papp.cycling.send({"n": n, "seconds": rng.choice([0.0, 0.01, 0.05, 0.2])})
        time.sleep(rng.choice([0.0, 0.005, 0.02, 0.05, 0.1]))
        try:
            assert runs[n].pause() is True
            outcomes[n] = "paused"
        except WorkflowStateError:
            outcomes[n] = "completed"

    def settled() -> bool:  # every paused one has stopped what ran
        return not db(
            "SELECT 1 FROM task WHERE workflow_id = ANY(%s) AND status = 'running'",
            ([r.id for r in runs.values()],),
        )

    wait_until(settled, 60, what="the paused steps to stop")
    for n, run in runs.items():
        if outcomes[n] == "paused":
            assert run.refresh().status in (WorkflowStatus.PAUSED, WorkflowStatus.COMPLETED)
            if run.status is WorkflowStatus.PAUSED:
                assert run.resume() is WorkflowStatus.PAUSED
    for run in runs.values():
        completed(run)
    print(f"outcomes: {sorted(outcomes.values()).count('paused')} paused of {len(outcomes)}")
    assert not read_events(out_dir, "overlap")
    for n, run in runs.items():
        # Each step completed exactly once; every other attempt of it was stopped by a pause
        # (interrupted). A stop may land after a body's last line, before its worker read the
        # outcome (as a cancel may): that body ran to its end in an attempt recorded stopped,
        # so a body may have begun once per attempt, never more.
        for step, kind in zip(run.refresh().steps, ("first", "end", "last"), strict=True):
            assert step.handle is not None
            statuses = [r.status for r in step.handle.refresh().task_runs]
            assert statuses.count("completed") == 1, (n, step.name, statuses)
            assert set(statuses) <= {"completed", "interrupted"}, (n, step.name, statuses)
            assert 1 <= len(events(out_dir, kind, n)) <= len(statuses), (n, step.name)
        assert run.result == n
        for step in range(3):
            statuses = [r[1] for r in runs_of(db, step_row(db, run, step)[0])]
            assert statuses.count("completed") == 1 and statuses[-1] == "completed", statuses
            assert set(statuses) <= {"interrupted", "completed"}, statuses


def test_pause_during_a_sigterm_drain_ends_paused_and_resumes_elsewhere(papp, pworker, db, out_dir):
    w = pworker("--processes", "1", "--grace-period", "120")
    run = papp.pipeline.send({"n": 9})
    wait_started(out_dir, 9)
    task_id = step_row(db, run, 1)[0]
    w.signal(signal.SIGTERM)
    wait_until(lambda: "worker_stopping" in w.log(), 30, what="the drain to begin")
    began = time.monotonic()
    assert run.pause() is True
    wait_until(lambda: step_status(db, run, 1) == "paused", 30, what="the pause")
    took = time.monotonic() - began
    print(f"paused during the drain in {took * 1000:.0f} ms")
    assert took < STOP_BOUND
    assert w.proc.wait(60) == 0
    assert [r[:3] for r in runs_of(db, task_id)] == [(1, "interrupted", "WorkflowPaused")]
    assert run.refresh().status is WorkflowStatus.PAUSED
    pworker("--processes", "1")
    served(papp, 900)
    assert step_status(db, run, 1) == "paused"  # the new worker leaves it held
    assert run.resume() is WorkflowStatus.PAUSED
    wait_started(out_dir, 9, attempt=2)
    finishes(run, out_dir, 9)
    assert [r[:2] for r in runs_of(db, task_id)] == [(1, "interrupted"), (2, "completed")]


def test_a_step_whose_worker_died_during_the_pause_ends_paused(papp, pworker, db, out_dir):
    """The worker is stopped (SIGSTOP: it never reads the NOTIFY), the workflow paused, the
    worker killed: another worker's rescuer holds the step (paused, not queued or canceled),
    and the resume runs it on a fresh worker."""
    a = pworker("--processes", "1", *FAST)
    run = papp.pipeline.send({"n": 10})
    wait_started(out_dir, 10)
    task_id = step_row(db, run, 1)[0]
    # the worker marks the run started (at its next heartbeat): the rescue then closes it lost
    wait_until(lambda: runs_of(db, task_id)[0][3] is not None, 30, what="the start mark")
    executors = a.executor_pids()
    a.signal(signal.SIGSTOP)
    try:
        assert run.pause() is True
        assert step_status(db, run, 1) == "running"  # stop requested; nobody acts on it yet
        assert run.status is WorkflowStatus.PAUSED
    finally:
        a.kill()
        for pid in executors:  # its executor would run on, orphaned
            os.kill(pid, signal.SIGKILL)
    b = pworker("--processes", "1", *FAST)
    wait_until(lambda: step_status(db, run, 1) != "running", 60, what="the rescue")
    assert step_status(db, run, 1) == "paused"
    served(papp, 1000)  # the rescuer serves, and leaves the held step alone
    _, status, attempts, failures, _ = step_row(db, run, 1)
    assert (status, attempts, failures) == ("paused", 1, 0)
    assert [r[:3] for r in runs_of(db, task_id)] == [(1, "lost", "WorkerLost")]
    assert len(events(out_dir, "start", 10)) == 1
    assert run.resume() is WorkflowStatus.PAUSED
    wait_started(out_dir, 10, attempt=2)
    finishes(run, out_dir, 10)
    assert [r[:2] for r in runs_of(db, task_id)] == [(1, "lost"), (2, "completed")]
    b.stop()


def test_a_pause_whose_notify_was_missed_is_found_by_the_heartbeat(
    papp, pworker, db, out_dir, monkeypatch
):
    """The pause's NOTIFY goes to a channel nobody listens on: the worker's next heartbeat
    returns the request and the worker stops the step."""
    w = pworker("--processes", "1", "--heartbeat-interval", "0.5", "--stale-after", "5")
    run = papp.pipeline.send({"n": 11})
    wait_started(out_dir, 11)
    task_id = step_row(db, run, 1)[0]
    began = time.monotonic()
    unheard_pause(run, monkeypatch)
    wait_until(lambda: step_status(db, run, 1) == "paused", 30, what="the pause")
    took = time.monotonic() - began
    print(f"found by the heartbeat and paused in {took * 1000:.0f} ms")
    assert took < STOP_BOUND
    assert [r[:3] for r in runs_of(db, task_id)] == [(1, "interrupted", "WorkflowPaused")]
    assert step_task(db, run, 2) is None
    assert "task_paused" in w.log()
    assert run.resume() is WorkflowStatus.PAUSED
    finishes(run, out_dir, 11)
