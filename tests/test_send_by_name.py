"""Send by name (`hy.send("name", payload)`): a task registered here is sent as its own
`with_config(...).send(...)`; any other name goes out as JSON for a worker that knows it (real
worker), or is refused by a registry made with ``refuse_unknown_tasks=True``."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import psycopg
import pydantic
import pytest

from hyrex_like import (
    MAX_NESTING_DEPTH,
    HyrexRegistry,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    Settings,
    UnknownTaskName,
)

from .helpers import count, done

ANN = {"name": "ann", "age": 31}


@pytest.fixture
def bapp(app_registry):  # type: ignore[no-untyped-def]
    """tests/apps/by_name_app.py, its registry bound to this test's schema."""
    from .apps import by_name_app

    app_registry(by_name_app.hy)
    return by_name_app


def test_a_registered_name_is_sent_as_the_task_itself(bapp, database_url, schema):
    handle = bapp.hy.send("greet", ANN, queue="people", priority=9, idempotency_key="ann")
    assert handle.task_name == "greet"
    assert (handle.queue, handle.priority, handle.row.max_retries) == ("people", 9, 3)
    assert bapp.hy.send("greet", {"name": "bob", "age": 2}, idempotency_key="ann").deduplicated
    with pytest.raises(pydantic.ValidationError):  # validated at send, as greet.send is
        bapp.hy.send("greet", {"name": "ann"})
    with pytest.raises(InvalidTaskOption, match="task greet.*priority"):
        bapp.hy.send("greet", ANN, priority=11)
    with pytest.raises(TypeError, match="takes no payload"):
        bapp.hy.send("ping", {"x": 1})
    assert count(database_url, schema) == 1


def test_an_unknown_name_runs_on_a_worker_that_registers_it(registry, worker):
    handle = registry.send("greet", ANN, max_retries=1)
    assert handle.refresh().row.args == ANN and handle.row.max_retries == 1
    bare = registry.send("ping")  # no payload: null
    assert bare.refresh().row.args is None
    later = asyncio.run(registry.asend("ping", delay=timedelta(seconds=0.5)))
    due = later.refresh().run_after  # a finished task's run_after is when it finished
    w = worker("by_name_app:hy", "--processes", "1")
    assert done(handle, 30).status == "completed"
    assert handle.result == "hello ann, 31"  # the stored JSON: no result type here
    assert done(bare, 30).result == "pong"
    assert done(later, 30).status == "completed"
    assert later.task_runs[0].claimed_at >= due
    assert w.stop() == 0


def test_an_invalid_payload_fails_at_once_on_the_worker(registry, worker):
    handle = registry.send("greet", {"name": "ann", "age": "old"}, max_retries=3)
    w = worker("by_name_app:hy", "--processes", "1")
    assert done(handle, 30).status == "failed"
    [run] = handle.task_runs
    assert run.status == "failed" and run.error_type == "ValidationError"
    assert "age" in run.error_message
    assert handle.attempt_count == 1 and handle.row.max_retries == 3
    assert w.stop() == 0


def test_a_registry_that_knows_every_task_refuses_unknown_names(bapp, database_url, schema):
    strict = HyrexRegistry(database_url, schema=schema, refuse_unknown_tasks=True)
    try:

        @strict.task
        def known(n: int) -> int:
            return n

        strict.migrate()
        with pytest.raises(UnknownTaskName, match="refuse_unknown_tasks=True") as info:
            strict.send("greet", ANN)
        assert "'greet'" in str(info.value) and "known" in str(info.value)
        with pytest.raises(UnknownTaskName):
            asyncio.run(strict.asend("greet", ANN))
        assert count(database_url, schema) == 0
        assert strict.send("known", 4).task_name == "known"
    finally:
        strict.close()


@pytest.mark.parametrize(
    ("payload", "error", "problem"),
    [
        ({"text": "a\x00b"}, PayloadNotSerializable, "NUL"),
        ({"x": math.nan}, PayloadNotSerializable, r"\$.x is nan"),
        ({"x": [math.inf]}, PayloadNotSerializable, "inf"),
        ({"text": "\ud800"}, PayloadNotSerializable, "lone surrogate"),
        ({"\udcff": 1}, PayloadNotSerializable, "lone surrogate"),
        ({"x": object()}, PayloadNotSerializable, "cannot be stored as JSON"),
        ("a" * 200, PayloadTooLarge, "202 bytes"),
    ],
)
def test_an_unknown_names_payload_must_be_json_a_worker_can_load(
    database_url, schema, payload, error, problem
):
    settings = Settings.from_env(
        {
            "HYREX_LIKE_DATABASE_URL": database_url,
            "HYREX_LIKE_SCHEMA": schema,
            "HYREX_LIKE_MAX_PAYLOAD_BYTES": "100",
        }
    )
    with HyrexRegistry(settings=settings) as hy:
        hy.migrate()
        with pytest.raises(error, match=problem) as info:
            hy.send("elsewhere", payload)
        assert "task elsewhere" in str(info.value)
        assert count(database_url, schema) == 0


def test_an_unknown_names_payload_may_not_nest_too_deep(registry, database_url, schema):
    registry.migrate()
    deep: object = 1
    for _ in range(MAX_NESTING_DEPTH):
        deep = [deep]
    with pytest.raises(PayloadNotSerializable, match="MAX_NESTING_DEPTH"):
        registry.send("elsewhere", deep)
    assert count(database_url, schema) == 0


@pytest.mark.parametrize(
    ("name", "options", "problem"),
    [
        ("", {}, "task name must not be empty"),
        ("a\x00b", {}, "control character"),
        ("x" * 256, {}, "limit is 255"),
        ("elsewhere", {"priority": 0}, "task elsewhere.*priority"),
        ("elsewhere", {"queue": ""}, "task elsewhere.*queue"),
        ("elsewhere", {"max_retries": -1}, "task elsewhere.*max_retries"),
        ("elsewhere", {"timeout_seconds": 0}, "task elsewhere.*timeout_seconds"),
        ("elsewhere", {"retry_backoff": math.nan}, "task elsewhere.*retry_backoff"),
        ("elsewhere", {"run_at": datetime(2031, 1, 1)}, "naive"),
        ("elsewhere", {"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_an_unknown_name_and_its_options_are_checked_as_at_hy_task(
    registry, database_url, schema, name, options, problem
):
    registry.migrate()
    with pytest.raises(InvalidTaskOption, match=problem):
        registry.send(name, {"n": 1}, **options)
    assert count(database_url, schema) == 0


def test_send_by_name_with_a_key_a_due_time_and_the_callers_transaction(
    registry, database_url, schema
):
    due = datetime.now(UTC) + timedelta(hours=1)
    first = registry.send("elsewhere", {"n": 1}, run_at=due, idempotency_key="k")
    assert first.deduplicated is False and first.run_after == due
    again = asyncio.run(registry.asend("elsewhere", {"n": 2}, idempotency_key="k"))
    assert again.deduplicated is True and again.id == first.id
    with psycopg.connect(database_url) as conn:
        registry.send("elsewhere", {"n": 3}, conn=conn)
        conn.rollback()
    assert count(database_url, schema) == 1
