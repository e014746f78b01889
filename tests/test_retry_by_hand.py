"""Retry by hand (`handle.retry`, `hy.retry`) and cancelling queued or delayed tasks, with a
real worker and a real server: attempt numbers go on, old runs stay, the budget is fresh."""

from __future__ import annotations

import uuid

import pytest

from hyrex_like import InvalidTaskId, KeyInUse, TaskNotFound

from .helpers import done, wait_until


@pytest.fixture
def sapp(app_registry):  # type: ignore[no-untyped-def]
    """tests/apps/send_lifecycle_app.py, its registry bound to this test's schema."""
    from .apps import send_lifecycle_app

    app_registry(send_lifecycle_app.hy)
    return send_lifecycle_app


def _attempts(handle):  # type: ignore[no-untyped-def]
    return [(r.attempt_number, r.status) for r in handle.task_runs]


def test_a_failed_task_retried_by_hand_runs_again_with_a_fresh_budget(sapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    handle = sapp.fails_before.send({"n": 99})  # max_retries=1: fails every attempt
    assert done(handle, 30).status == "failed"
    assert _attempts(handle) == [(1, "failed"), (2, "failed")]
    assert handle.retry() is True
    assert handle.status in ("queued", "running")
    assert done(handle, 30).status == "failed"
    assert _attempts(handle) == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed")]
    assert handle.attempt_count == 4
    assert handle.last_error == {"type": "ValueError", "message": "attempt 4 fails", "attempt": 4}
    assert w.stop() == 0


def test_hy_retry_by_id_and_the_retried_attempt_completes(sapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    handle = sapp.fails_before.send({"n": 3})  # attempts 1 and 2 fail, the budget is spent
    assert done(handle, 30).status == "failed"
    assert sapp.hy.retry(str(handle.id)) is True
    assert done(handle, 30).status == "completed"
    assert handle.result == 3
    assert _attempts(handle) == [(1, "failed"), (2, "failed"), (3, "completed")]
    assert w.stop() == 0


def test_retry_of_a_queued_or_completed_task_changes_nothing(sapp, worker):
    queued = sapp.record.send({"n": 1}, delay=600)
    assert queued.retry() is False and queued.status == "queued"
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    ok = sapp.record.send({"n": 2})
    assert done(ok, 30).status == "completed"
    assert sapp.hy.retry(ok.id) is False
    assert ok.refresh().status == "completed" and _attempts(ok) == [(1, "completed")]
    assert w.stop() == 0


def test_a_canceled_task_retried_by_hand_runs(sapp, worker):
    handle = sapp.record.send({"n": 7}, delay=600)
    assert handle.cancel() is True
    assert handle.retry() is True
    assert handle.status == "queued" and handle.task_runs == []
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    assert done(handle, 30).status == "completed"
    assert handle.result == 7
    assert w.stop() == 0


def test_retry_refuses_a_task_whose_key_was_taken_meanwhile(sapp):
    first = sapp.record.send({"n": 1}, idempotency_key="order-42", delay=600)
    assert sapp.hy.cancel(first.id) is True
    taker = sapp.record.send({"n": 2}, idempotency_key="order-42", delay=600)
    assert taker.deduplicated is False
    with pytest.raises(KeyInUse, match="'order-42' is held by task " + str(taker.id)):
        first.retry()
    assert first.refresh().status == "canceled"
    assert taker.cancel() is True
    assert first.retry() is True  # the key is free again


def test_retry_and_cancel_of_a_bad_or_unknown_id(sapp):
    sapp.hy.migrate()
    for call in (sapp.hy.retry, sapp.hy.cancel):
        with pytest.raises(InvalidTaskId):
            call("not-a-task-id")
        with pytest.raises(TaskNotFound):
            call(uuid.uuid4())


def test_canceled_queued_and_delayed_tasks_never_run(sapp, worker):
    queued = sapp.record.send({"n": 1})
    delayed = sapp.record.send({"n": 2}, delay=1.0)
    assert sapp.hy.cancel(queued.id) is True
    assert delayed.cancel() is True
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    # sent after them and due after the delayed one: once these ran, the worker had its chance
    later = sapp.record.send({"n": 3})
    due_later = sapp.record.send({"n": 4}, delay=1.5)
    assert done(later, 30).status == "completed"
    assert done(due_later, 30).status == "completed"
    for handle in (queued, delayed):
        assert handle.refresh().status == "canceled"
        assert handle.task_runs == [] and handle.attempt_count == 0
    assert w.stop() == 0


def test_cancelling_a_finished_task_returns_false(sapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    ok = sapp.record.send({"n": 1})
    doomed = sapp.fails_before.send({"n": 99})
    assert done(ok, 30).status == "completed"
    assert done(doomed, 30).status == "failed"
    assert ok.cancel() is False and ok.status == "completed"
    assert sapp.hy.cancel(doomed.id) is False
    assert doomed.refresh().status == "failed"
    canceled = sapp.record.send({"n": 2}, delay=600)
    assert canceled.cancel() is True
    assert canceled.cancel() is False  # already final
    wait_until(lambda: w.stop() == 0, 60, what="the worker to stop cleanly")
