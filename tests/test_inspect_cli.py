"""``hy.list_workers()``, ``hyrex-like workers`` and ``hyrex-like tasks show ID`` with real
workers (issue #18, first part)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from hyrex_like import HyrexRegistry, InvalidTaskOption
from hyrex_like.states import WorkerStatus

from .helpers import Worker, done, run_cli, wait_until, worker_ids


@pytest.fixture
def bapp(app_registry: Callable[[HyrexRegistry], HyrexRegistry]) -> Any:
    from .apps import basic_app

    app_registry(basic_app.hy)
    return basic_app


def test_workers_are_listed_while_running_and_after_they_stop(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    bapp: Any,
    database_url: str,
    schema: str,
) -> None:
    assert registry.list_workers() == []
    w = worker("basic_app:hy", "--processes", "2", "--queue", "default")
    wait_until(lambda: len(worker_ids(database_url, schema)) == 1, 60, what="the worker row")
    done(bapp.echo.send({"n": 1}), 30)
    [info] = registry.list_workers()
    assert (info.status, info.processes, info.queues, info.running) == (
        WorkerStatus.RUNNING,
        2,
        ["default"],
        0,
    )
    assert info.pid == w.pid and "echo" in info.task_names and info.stopped_at is None
    listed = run_cli("workers", "--json", database_url=database_url, schema=schema)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["status"], row["pid"]) == (str(info.id), "running", w.pid)
    human = run_cli("workers", database_url=database_url, schema=schema)
    assert human.stdout.splitlines()[0].split()[:4] == ["WORKER", "HOST", "PID", "STATUS"]
    assert str(info.id) in human.stdout
    assert w.stop() == 0
    [after] = registry.list_workers()
    assert after.status == WorkerStatus.STOPPED and after.stopped_at is not None
    assert registry.list_workers(recent=0) == []  # ended before now: not among the last 0 s
    with pytest.raises(InvalidTaskOption, match="recent"):
        registry.list_workers(recent=-1)


def test_tasks_show_prints_every_run_with_its_error_and_traceback(
    worker: Callable[..., Worker], bapp: Any, database_url: str, schema: str
) -> None:
    worker("basic_app:hy", "--processes", "1")
    handle = done(bapp.fail_once.send({"n": 7}), 60)
    assert handle.status == "completed" and len(handle.task_runs) == 2
    shown = run_cli("tasks", "show", str(handle.id), database_url=database_url, schema=schema)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"id:             {handle.id}" in out and "fail_once" in out
    assert "attempt 1: failed" in out and "attempt 2: completed" in out
    first = handle.task_runs[0]
    assert f"error: {first.error_type}: {first.error_message}" in out
    assert "    | Traceback (most recent call last):" in out
    as_json = run_cli(
        "tasks", "show", str(handle.id), "--json", database_url=database_url, schema=schema
    )
    task = json.loads(as_json.stdout)
    assert (task["id"], task["task_name"], task["status"]) == (
        str(handle.id),
        "fail_once",
        "completed",
    )
    assert [r["status"] for r in task["runs"]] == ["failed", "completed"]
    assert task["runs"][0]["traceback"].startswith("Traceback")
    missing = run_cli("tasks", "show", str(uuid.uuid4()), database_url=database_url, schema=schema)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    malformed = run_cli("tasks", "show", "nope", database_url=database_url, schema=schema)
    assert malformed.returncode == 2 and "is not a task id" in malformed.stderr
