"""Handles tell the truth: a typed result, no stale error on a completed task, one error shape,
a fresh handle that says what it is."""

from __future__ import annotations

import pydantic
import pytest
from pydantic import BaseModel

from hyrex_like import HyrexRegistry, RunStatus, TaskNotCompleted, TaskStatus

from .apps import basic_app
from .helpers import query


class Doubled(BaseModel):
    n: int
    doubled: int


def _complete(database_url: str, schema: str, task_id: object, result_json: str) -> None:
    """What a worker writes when an attempt completes (the worker tests cover the real path)."""
    query(
        database_url,
        schema,
        "UPDATE task SET status = 'completed', attempt_count = 1, result = %s::jsonb WHERE id = %s",
        (result_json, task_id),
    )


def test_a_fresh_handle_says_queued(registry: HyrexRegistry, database_url: str, schema: str):
    @registry.task
    def double(n: int) -> Doubled:
        return Doubled(n=n, doubled=2 * n)

    handle = double.send(4)
    assert repr(handle) == f"<TaskHandle double {handle.id} queued>"
    _complete(database_url, schema, handle.id, '{"n": 4, "doubled": 8}')
    assert repr(handle.refresh()) == f"<TaskHandle double {handle.id} completed>"
    assert handle.status is TaskStatus.COMPLETED and handle.row.status is TaskStatus.COMPLETED


def test_result_comes_back_as_the_return_type(
    registry: HyrexRegistry, database_url: str, schema: str
):
    @registry.task
    def double(n: int) -> Doubled:
        return Doubled(n=n, doubled=2 * n)

    @registry.task
    def pair(n: int) -> tuple[int, str]:
        return n, str(n)

    handle = double.send(4)
    other = pair.send(1)
    _complete(database_url, schema, handle.id, '{"n": 4, "doubled": 8}')
    _complete(database_url, schema, other.id, '[1, "1"]')
    assert handle.refresh().result == Doubled(n=4, doubled=8)
    assert handle.result.doubled == 8
    assert handle.row.result == {"n": 4, "doubled": 8}  # the stored JSON
    assert other.refresh().result == (1, "1")
    # rebuilt from a stored id too, when the task is registered here
    assert registry.get_handle(str(handle.id)).result == Doubled(n=4, doubled=8)
    # a registry that does not know the task gives the JSON as stored
    with HyrexRegistry(database_url, schema=schema) as elsewhere:
        assert elsewhere.get_handle(handle.id).result == {"n": 4, "doubled": 8}


def test_a_stored_result_that_no_longer_matches_says_where_the_json_is(
    registry: HyrexRegistry, database_url: str, schema: str
):
    @registry.task
    def double(n: int) -> Doubled:
        return Doubled(n=n, doubled=2 * n)

    handle = double.send(4)
    _complete(database_url, schema, handle.id, '{"n": "four"}')
    with pytest.raises(pydantic.ValidationError) as info:
        handle.refresh().result  # noqa: B018
    assert any("handle.row.result" in note for note in info.value.__notes__)


def test_result_of_a_task_not_completed_raises_saying_why(
    registry: HyrexRegistry, database_url: str, schema: str
):
    @registry.task
    def double(n: int) -> Doubled:
        return Doubled(n=n, doubled=2 * n)

    handle = double.send(4)
    with pytest.raises(TaskNotCompleted, match=r"is queued and has no result yet.*wait\(\)"):
        handle.result  # noqa: B018
    query(
        database_url,
        schema,
        "UPDATE task SET status = 'failed', attempt_count = 2, last_error = "
        """'{"type": "ValueError", "message": "boom", "attempt": 2}' WHERE id = %s""",
        (handle.id,),
    )
    with pytest.raises(TaskNotCompleted) as info:
        handle.refresh().result  # noqa: B018
    assert info.value.status == "failed"
    assert "failed after 2 attempt(s)" in str(info.value)
    assert "last error ValueError: boom" in str(info.value)
    assert handle.last_error == {"type": "ValueError", "message": "boom", "attempt": 2}


def test_a_task_completed_after_retries_has_no_last_error_and_keeps_its_history(
    app_registry, worker, database_url: str, schema: str
):
    app_registry(basic_app.hy)
    handle = basic_app.fail_once.send(basic_app.Item(n=1))
    w = worker("basic_app:hy", "--processes", "1", "--poll-interval", "0.1")
    assert handle.wait(30).status == "completed", handle.task_runs
    assert handle.attempt_count == 2
    assert handle.last_error is None
    assert query(database_url, schema, "SELECT last_error FROM task") == [(None,)]
    assert handle.result == "ok"
    first, second = handle.task_runs
    assert first.error == {
        "type": "RuntimeError",
        "message": "first attempt of 1 fails",
        "attempt": 1,
    }
    assert second.error is None
    assert (first.status, second.status) == (RunStatus.FAILED, RunStatus.COMPLETED)
    assert type(first.status) is RunStatus and handle.status is TaskStatus.COMPLETED
    assert w.stop() == 0
