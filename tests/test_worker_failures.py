"""Failed attempts: run rows, retries with backoff, on_error, timeouts, executor crashes."""

from __future__ import annotations

import os
import signal

import pytest

from .helpers import done, json_log, read_events, wait_until, worker_ids


def test_every_attempt_has_its_own_run_row_with_outcome_and_error(
    wapp, app_worker, database_url, schema
):
    handle = wapp.fail_twice.send({"n": 1})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    [worker_id] = worker_ids(database_url, schema)
    runs = handle.task_runs
    assert [r.attempt_number for r in runs] == [1, 2, 3]
    assert [r.status for r in runs] == ["failed", "failed", "completed"]
    for r in runs:
        assert r.worker_id == worker_id
        assert r.finished_at is not None and r.started_at <= r.finished_at
    for attempt, r in enumerate(runs[:2], start=1):
        assert r.error_type == "ValueError"
        assert r.error_message == f"attempt {attempt} of task 1 fails on purpose"
        assert "Traceback" in r.traceback and "worker_app.py" in r.traceback
        assert "fails on purpose" in r.traceback
        assert r.result is None
    assert runs[2].result == "ok after 3" == handle.result
    assert runs[2].error_type is None and runs[2].traceback is None
    assert handle.attempt_count == 3
    assert w.stop() == 0


def test_retries_follow_backoff_then_fail_when_exhausted(wapp, app_worker, out_dir):
    handle = wapp.always_fails.send({"n": 2})  # max_retries=1, retry_backoff=1.0
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "failed"
    runs = handle.task_runs
    assert [(r.attempt_number, r.status, r.error_type) for r in runs] == [
        (1, "failed", "KeyError"),
        (2, "failed", "KeyError"),
    ]
    assert (runs[1].started_at - runs[0].finished_at).total_seconds() >= 1.0
    assert handle.last_error["type"] == "KeyError"
    assert handle.last_error["attempt"] == 2
    assert handle.row.finished_at is not None
    assert len(read_events(out_dir, "start")) == 2
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["KeyError", "KeyError"]
    assert w.stop() == 0


def test_on_error_runs_for_every_failure_without_changing_the_outcome(wapp, app_worker, out_dir):
    flaky = wapp.fail_first.send({"n": 1})  # fails once, then succeeds
    doomed = wapp.never_works.send({"n": 2})  # max_retries=0
    w = app_worker("--processes", "1")
    assert done(flaky, 30).status == "completed"
    assert done(doomed, 30).status == "failed"
    messages = sorted(e["message"] for e in read_events(out_dir, "on_error"))
    assert messages == ["first attempt fails", "never works"]
    assert w.stop() == 0


def test_on_error_that_raises_is_logged_and_not_fatal(wapp, app_worker, out_dir):
    # one failure inside the executor, one (a timeout) handled by the worker process itself
    in_executor = wapp.fail_first_bad_handler.send({"n": 1})
    in_parent = wapp.too_slow_bad_handler.send({"n": 2})
    w = app_worker("--processes", "1", "--log-format", "json")
    assert done(in_executor, 30).status == "completed"
    assert [r.status for r in in_executor.task_runs] == ["failed", "completed"]
    assert done(in_parent, 30).status == "failed"
    assert [r.status for r in in_parent.task_runs] == ["timed_out"]
    assert len(read_events(out_dir, "on_error")) == 2  # the handler ran, then raised
    failed = [e for e in json_log(w) if e["event"] == "on_error_failed"]
    assert {e["task_id"] for e in failed} == {str(in_executor.id), str(in_parent.id)}
    for e in failed:
        assert "the on_error handler itself broke" in e["error"]
    after = wapp.record.send({"n": 3})
    assert done(after, 30).status == "completed"
    assert w.proc.poll() is None
    assert w.stop() == 0


def test_timeout_kills_the_executor_records_timed_out_and_retries(wapp, app_worker, out_dir):
    slow = wapp.too_slow.send({"n": 1})  # timeout 1 s, max_retries=1
    w = app_worker("--processes", "1")
    wait_until(lambda: read_events(out_dir, "start"), 30, what="the first attempt to start")
    queued_behind = wapp.record.send({"n": 2})
    assert done(slow, 30).status == "failed"
    runs = slow.task_runs
    assert [(r.attempt_number, r.status, r.error_type) for r in runs] == [
        (1, "timed_out", "TaskTimeout"),
        (2, "timed_out", "TaskTimeout"),
    ]
    for r in runs:
        assert "timeout of 1s" in r.error_message
        assert 1.0 <= (r.finished_at - r.started_at).total_seconds() < 5
    starts = read_events(out_dir, "start")
    assert len(starts) == 2
    pids = [e["pid"] for e in starts]
    assert pids[0] != pids[1], "the second attempt must run in a fresh executor"
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, what=f"executor {pid} to be gone")
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["TaskTimeout"] * 2
    assert done(queued_behind, 30).status == "completed"  # a fresh executor runs the next one
    assert w.stop() == 0


def test_executor_killed_with_sigkill_loses_the_run_and_the_task_is_retried(
    wapp, app_worker, out_dir
):
    handle = wapp.hang_first.send({"n": 1})
    w = app_worker("--processes", "1")
    [start] = wait_until(lambda: read_events(out_dir, "start"), 30, what="attempt 1")
    assert start["pid"] in w.executor_pids()
    os.kill(start["pid"], signal.SIGKILL)
    assert done(handle, 30).status == "completed"
    runs = handle.task_runs
    assert [(r.attempt_number, r.status) for r in runs] == [(1, "lost"), (2, "completed")]
    assert runs[0].error_type == "ExecutorLost"
    assert "signal 9" in runs[0].error_message
    assert handle.result == 2
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["ExecutorLost"]
    after = wapp.record.send({"n": 2})
    assert done(after, 30).status == "completed"
    assert w.stop() == 0


def test_executor_that_calls_os_exit_loses_the_run_and_the_task_is_retried(
    wapp, app_worker, out_dir
):
    handle = wapp.exit_first.send({"n": 1})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    runs = handle.task_runs
    assert [(r.attempt_number, r.status) for r in runs] == [(1, "lost"), (2, "completed")]
    assert runs[0].error_type == "ExecutorLost"
    assert "exited with code 3" in runs[0].error_message
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["ExecutorLost"]
    after = wapp.record.send({"n": 2})
    assert done(after, 30).status == "completed"
    assert w.proc.poll() is None
    assert w.stop() == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_crashing_task_does_not_cost_its_batch_neighbours_their_results(
    wapp, app_worker, out_dir
):
    # One executor gets both in one batch: the first finishes, then the second kills the
    # process. The first's result must already be with the parent: recorded once, not re-run.
    quick = [wapp.record.send({"n": n}) for n in (1, 2, 3)]
    crasher = wapp.exit_first.send({"n": 4})
    w = app_worker("--processes", "1", "--prefetch", "8")
    assert done(crasher, 30).status == "completed"
    assert [r.status for r in crasher.task_runs] == ["lost", "completed"]
    for handle in quick:
        assert done(handle, 30).status == "completed"
        assert [r.status for r in handle.task_runs] == ["completed"]
    assert len(read_events(out_dir, "record")) == 3
    assert w.stop() == 0


@pytest.mark.parametrize(
    ("task", "stored"),
    [
        ("nul_error", "bad byte \\x00 in record 1"),  # PostgreSQL text cannot hold a NUL
        ("surrogate_error", "bad ? name 1"),  # nor JSON a lone surrogate
        ("tricky_error", 'he said "no", {a,b} \\ NULL\n\ttab é 1'),  # stored as raised
    ],
)
def test_an_error_message_the_database_cannot_store_is_recorded_and_the_worker_goes_on(
    wapp, app_worker, task, stored
):
    bad = getattr(wapp, task).send({"n": 1})
    w = app_worker("--processes", "1")
    assert done(bad, 30).status == "failed"
    [run] = bad.task_runs
    assert run.error_type == "ValueError"
    assert run.error_message == stored
    after = wapp.record.send({"n": 2})
    assert done(after, 30).status == "completed"
    assert w.proc.poll() is None
    assert w.stop() == 0


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def test_first_executors_are_forked_and_replacements_spawned(wapp, app_worker):
    """The executors started with the worker are forked from it (no second import of the app),
    which is safe only before it opens a connection or a thread; a replacement after a crash
    is a fresh spawned interpreter. Every executor names itself, and so do the dispatcher's
    database threads."""
    w = app_worker("--processes", "2")
    first = wait_until(lambda: len(w.executor_pids()) == 2 and w.executor_pids(), 30)
    for pid in first:
        assert _cmdline(pid) == _cmdline(w.proc.pid), "a forked executor shares its cmdline"
    assert done(wapp.record.send({"n": 1}), 30).status == "completed"  # DB threads are up
    threads = set()
    for tid in os.listdir(f"/proc/{w.proc.pid}/task"):
        with open(f"/proc/{w.proc.pid}/task/{tid}/comm") as f:
            threads.add(f.read().strip())
    assert {"hyrex-writer", "hyrex-claimer"} <= threads
    os.kill(first[0], signal.SIGKILL)
    new = wait_until(
        lambda: [p for p in w.executor_pids() if p not in first] or None, 30, what="replacement"
    )
    assert b"multiprocessing" in _cmdline(new[0]), "a replacement is spawned, not forked"
    assert done(wapp.record.send({"n": 2}), 30).status == "completed"
    assert w.stop() == 0


def test_a_result_with_quotes_braces_and_backslashes_is_stored_as_returned(wapp, app_worker):
    handle = wapp.tricky_result.send({"n": 7})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    expected = {wapp.TRICKY: f"{wapp.TRICKY} 7"}
    assert handle.result == expected
    assert [r.result for r in handle.task_runs] == [expected]
    assert w.stop() == 0


def test_a_slow_on_error_for_a_timeout_does_not_hold_up_dispatch(app_registry, worker, out_dir):
    """The worker calls on_error itself for a timeout; a handler that blocks runs on its own
    thread while other tasks are dispatched, and is waited for at shutdown. The handler
    returns only once the test creates a file, after every other task has completed: no
    assumption on how long anything takes."""
    from .apps import slow_handler_app as app

    app_registry(app.hy)
    stuck = app.stuck.send(1)  # times out after 0.5 s; its handler then blocks
    w = worker("slow_handler_app:hy", "--processes", "1", env={"HYREX_TEST_OUT": str(out_dir)})
    [start] = wait_until(lambda: read_events(out_dir, "handler_start"), 30, what="the handler")
    assert start["type"] == "TaskTimeout"
    # one executor: these run in the replacement spawned after the timeout
    quick = [app.quick.send(i) for i in range(5)]
    for handle in quick:
        assert done(handle, 60).status == "completed"
    assert done(stuck, 30).status == "failed"  # written without waiting for the handler
    assert read_events(out_dir, "handler_end") == [], "the handler returned before its release"
    # at shutdown, a handler still running is waited for (within the grace period)
    w.signal(signal.SIGTERM)
    wait_until(lambda: "worker_stopping" in w.log(), 30, what="the worker to begin stopping")
    (out_dir / app.RELEASE).touch()
    assert w.proc.wait(60) == 0
    assert [e["type"] for e in read_events(out_dir, "handler_end")] == ["TaskTimeout"]
