"""Queue settings: ``hy.queue(name, concurrency_limit=)``, ``hy.pause_queue``/``resume_queue``,
``hy.queues()``, and the ``hyrex-like queue``/``queues`` commands, with real workers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from hyrex_like import HyrexRegistry, InvalidQueueSetting, QueueInfo

from .helpers import Worker, count, done, query, run_cli, wait_until

APP = "queue_app:hy"


def _info(hy: HyrexRegistry, name: str) -> QueueInfo | None:
    return next((i for i in hy.queues() if i.name == name), None)


def test_bad_settings_are_refused_and_nothing_is_written(
    registry: HyrexRegistry, database_url: str, schema: str
) -> None:
    for name, limit, words in [
        ("", 2, "must not be empty"),
        ("a\x00b", 2, "control character"),
        ("x" * 256, 2, "256 characters"),
        ("payments", 0, "1 to 1,000,000"),
        ("payments", -3, "1 to 1,000,000"),
        ("payments", True, "positive int or None"),
        ("payments", 2.5, "positive int or None"),
        ("payments", "2", "positive int or None"),
    ]:
        with pytest.raises(InvalidQueueSetting, match=words):
            registry.queue(name, concurrency_limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueueSetting, match="must not be empty"):
        registry.pause_queue("")
    with pytest.raises(TypeError):
        registry.queue("payments")  # type: ignore[call-arg]  # the limit is never implied
    assert registry.queues() == []
    assert count(database_url, schema, table="queue") == 0


def test_settings_and_counts_are_listed(registry: HyrexRegistry, qapp: Any) -> None:
    for n in range(3):
        qapp.pay.send({"n": n})
    qapp.other.send({"n": 0})
    info = registry.queue("payments", concurrency_limit=2)
    assert info == QueueInfo("payments", 2, False, None, 3, 0)
    registry.pause_queue("idle")  # a queue with no task yet can be paused
    registry.pause_queue("idle")  # twice: still paused, since the first time
    first = _info(registry, "idle")
    assert first is not None and first.paused and first.paused_at is not None
    listed = registry.queues()
    assert [i.name for i in listed] == ["idle", "other", "payments"]
    assert listed[0].paused_at == first.paused_at
    assert (listed[1].concurrency_limit, listed[1].paused, listed[1].queued) == (None, False, 1)
    assert registry.resume_queue("idle") is True
    assert registry.resume_queue("idle") is False  # not paused any more
    assert registry.resume_queue("never-seen") is False
    assert registry.queue("payments", concurrency_limit=None).concurrency_limit is None


def test_cli_sets_lists_and_refuses(database_url: str, schema: str, qapp: Any) -> None:
    def cli(*args: str) -> Any:
        return run_cli(*args, database_url=database_url, schema=schema)

    qapp.pay.send({"n": 1})
    limited = cli("queue", "limit", "payments", "3")
    assert limited.returncode == 0, limited.stderr
    assert "at most 3" in limited.stdout
    assert cli("queue", "pause", "payments").returncode == 0
    table = cli("queues")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "LIMIT", "PAUSED", "QUEUED", "READY", "RUNNING", "OLDEST"]
    assert lines[1].split()[:6] == ["payments", "3", "yes", "1", "1", "0"]
    assert lines[1].split()[6].endswith("s")  # the ready task's age: seconds so far
    listed = json.loads(cli("queues", "--json").stdout)
    assert listed == [
        {
            "name": "payments",
            "concurrency_limit": 3,
            "paused": True,
            "paused_at": listed[0]["paused_at"],
            "queued": 1,
            "running": 0,
            "ready": 1,
            "oldest_ready_seconds": listed[0]["oldest_ready_seconds"],
        }
    ]
    assert listed[0]["paused_at"] is not None and listed[0]["oldest_ready_seconds"] >= 0
    assert cli("queue", "resume", "payments").returncode == 0
    again = cli("queue", "resume", "payments")
    assert again.returncode == 1 and "was not paused" in again.stdout
    removed = cli("queue", "limit", "payments", "none")
    assert removed.returncode == 0 and "no concurrency limit" in removed.stdout
    for bad in ("0", "-1", "two", "1.5"):
        refused = cli("queue", "limit", "payments", bad)
        assert refused.returncode == 2, bad
        assert "is not a concurrency limit" in refused.stderr
    assert json.loads(cli("queues", "--json").stdout)[0]["concurrency_limit"] is None


def test_a_paused_queue_is_not_claimed_and_resume_wakes_the_workers(
    worker: Callable[..., Worker], registry: HyrexRegistry, qapp: Any
) -> None:
    """With a 30 s poll, only the NOTIFY of resume can bring the paused tasks within seconds."""
    w = worker(APP, "--processes", "2", "--poll-interval", "30")
    done(qapp.other.send({"n": 0}), 30)  # the worker is up and idle
    registry.pause_queue("payments")
    paused = [qapp.pay.send({"n": n}) for n in range(5)]
    # Sent after them, to a queue that is not paused: once these ran, the worker had claimed.
    for n in range(5):
        done(qapp.other.send({"n": n}), 10)
    assert {h.refresh().status for h in paused} == {"queued"}
    info = _info(registry, "payments")
    assert info is not None and info.paused and info.queued == 5 and info.running == 0
    began = time.monotonic()
    assert registry.resume_queue("payments") is True
    for h in paused:
        done(h, 10)
    assert time.monotonic() - began < 10  # well before the next poll
    assert w.proc.poll() is None


def test_pausing_lets_running_tasks_finish(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    qapp: Any,
    database_url: str,
    schema: str,
) -> None:
    worker(APP, "--processes", "1", "--poll-interval", "30")
    running = qapp.pay.send({"n": 0, "seconds": 1.5})
    wait_until(lambda: running.refresh().status == "running", 30, what="the task to start")
    registry.pause_queue("payments")
    behind = qapp.pay.send({"n": 1})
    assert done(running, 10).status == "completed"  # the running task ends as it would have
    done(qapp.other.send({"n": 2}), 10)  # the worker claimed again since: not the paused one
    assert behind.refresh().status == "queued"
    assert (
        query(
            database_url, schema, "SELECT count(*) FROM task_run WHERE task_id = %s", (behind.id,)
        )[0][0]
        == 0
    )
    registry.resume_queue("payments")
    assert done(behind, 10).status == "completed"


def test_workers_stop_starting_a_paused_queue_within_a_second(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    qapp: Any,
    database_url: str,
    schema: str,
) -> None:
    """Paused in the middle of a drain: no task of the queue begins more than a second after
    the pause (what the worker claimed and had not started goes back), the rest stay queued
    while another queue still runs, and resume finishes them."""
    worker(APP, "--processes", "2", "--poll-interval", "30")
    handles = qapp.pay.send_many([{"n": n, "seconds": 0.05} for n in range(400)])
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") >= 20,
        60,
        what="the drain to be under way",
    )
    paused_at = time.time()
    registry.pause_queue("payments")
    running = "status = 'running' AND queue = 'payments'"
    wait_until(lambda: count(database_url, schema, running) == 0, 30, what="running to end")
    done(qapp.other.send({"n": 0}), 10)  # the worker claimed since, and not the paused queue
    finished = [h for h in handles if h.refresh().status == "completed"]
    left = [h for h in handles if h.status == "queued"]
    assert left and len(finished) + len(left) == len(handles)
    late = [h.result["began"] - paused_at for h in finished if h.result["began"] > paused_at + 1]
    assert not late, f"{len(late)} began more than a second after the pause: {late[:5]}"
    registry.resume_queue("payments")
    wait_until(lambda: all(h.refresh().done for h in handles), 60, what="the rest to run")
    assert {h.status for h in handles} == {"completed"}
