"""`hyrex-like cancel`, `retry`, `prune` and `run-worker --retention` end to end: real
processes, output and exit codes."""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import pytest

from hyrex_like.worker.maintenance import Maintenance

from .helpers import count, query, run_cli, wait_until

NO_SUCH_ID = "0b7e4f2c-1a5d-4c3e-9f00-5d2e8c6a1b34"


@pytest.fixture
def tasks(wapp, database_url, schema):  # type: ignore[no-untyped-def]
    """Make tasks in any status (by SQL: these tests are about the commands, not the worker)."""
    wapp.hy.migrate()

    def make(status: str = "queued", *, age: str = "0 s", parent: Any = None, **row: Any) -> str:
        handle = wapp.record.send({"n": 1})
        query(
            database_url,
            schema,
            "UPDATE task SET status = %(status)s::text, parent_id = %(parent)s::uuid,"
            # sent from inside its parent: the parent's tree
            " root_id = (SELECT coalesce(p.root_id, p.id) FROM task AS p"
            "            WHERE p.id = %(parent)s::uuid),"
            " worker_id = CASE WHEN %(status)s::text = 'running' THEN gen_random_uuid() END,"
            " attempt_count = CASE WHEN %(status)s::text = 'queued' THEN 0 ELSE 1 END,"
            " finished_at = CASE WHEN %(status)s::text IN ('completed', 'failed', 'canceled')"
            " THEN now() - %(age)s::interval END, idempotency_key = %(key)s"
            " WHERE id = %(id)s RETURNING id",
            {
                "status": status,
                "parent": parent,
                "age": age,
                "key": row.get("key"),
                "id": handle.id,
            },
        )
        return str(handle.id)

    return make


def cli(database_url: str, schema: str, *args: str) -> tuple[int, str, str]:
    proc = run_cli(*args, database_url=database_url, schema=schema)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def status_of(database_url: str, schema: str, task_id: str) -> str:
    return str(
        query(database_url, schema, "SELECT status FROM task WHERE id = %s", [task_id])[0][0]
    )


def error_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if "error:" in line]
    return line


# ------------------------------------------------------------------------------- cancel


def test_cancel_of_a_queued_task_cancels_it_then_says_it_is_already_canceled(
    tasks, database_url, schema
):
    task_id = tasks("queued")
    assert cli(database_url, schema, "cancel", task_id) == (0, f"task {task_id} canceled", "")
    assert status_of(database_url, schema, task_id) == "canceled"
    code, out, _ = cli(database_url, schema, "cancel", task_id)
    assert (code, out) == (1, f"task {task_id} is already canceled, nothing changed")


def test_cancel_of_a_finished_task_changes_nothing_and_exits_1(tasks, database_url, schema):
    task_id = tasks("completed")
    code, out, err = cli(database_url, schema, "cancel", task_id)
    assert (code, out, err) == (1, f"task {task_id} is already completed, nothing changed", "")
    assert status_of(database_url, schema, task_id) == "completed"


def test_cancel_of_a_running_task_requests_its_stop_from_its_worker(tasks, database_url, schema):
    task_id = tasks("running")
    [(worker,)] = query(database_url, schema, "SELECT worker_id FROM task WHERE id = %s", [task_id])
    code, out, _ = cli(database_url, schema, "cancel", task_id)
    assert (code, out) == (0, f"task {task_id}: stop requested (running on worker {worker})")
    [(requested,)] = query(
        database_url, schema, "SELECT cancel_requested_at FROM task WHERE id = %s", [task_id]
    )
    assert requested is not None


def test_cancel_with_children_cancels_the_unfinished_tasks_sent_from_it(
    tasks, database_url, schema
):
    parent = tasks("queued")
    queued_child = tasks("queued", parent=parent)
    running_child = tasks("running", parent=parent)
    finished_child = tasks("completed", parent=parent)
    code, out, _ = cli(database_url, schema, "cancel", parent, "--children")
    assert code == 0
    assert out == (
        f"task {parent} canceled; 1 unfinished task(s) sent from it canceled, 1 stop(s) requested"
    )
    assert status_of(database_url, schema, queued_child) == "canceled"
    assert status_of(database_url, schema, running_child) == "running"  # its worker stops it
    assert status_of(database_url, schema, finished_child) == "completed"


def test_cancel_with_children_of_a_finished_task_cancels_them_and_exits_1(
    tasks, database_url, schema
):
    parent = tasks("completed")
    child = tasks("queued", parent=parent)
    code, out, _ = cli(database_url, schema, "cancel", parent, "--children")
    assert (code, out) == (
        1,
        f"task {parent} is already completed; 1 unfinished task(s) sent from it canceled, "
        "0 stop(s) requested",
    )
    assert status_of(database_url, schema, child) == "canceled"


def test_cancel_without_children_leaves_them(tasks, database_url, schema):
    parent = tasks("queued")
    child = tasks("queued", parent=parent)
    assert cli(database_url, schema, "cancel", parent)[0] == 0
    assert status_of(database_url, schema, child) == "queued"


def test_cancel_of_an_unknown_id_exits_2_saying_so(tasks, database_url, schema):
    code, out, err = cli(database_url, schema, "cancel", NO_SUCH_ID)
    assert (code, out) == (2, "")
    assert err == f"hyrex-like: error: task {NO_SUCH_ID} does not exist in this database/schema"


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_a_malformed_id_exits_2_in_one_error_line(database_url, schema, command):
    code, out, err = cli(database_url, schema, command, "order-42")
    assert (code, out) == (2, "")
    assert "argument ID: 'order-42' is not a task id: expected a UUID" in error_line(err)


# -------------------------------------------------------------------------------- retry


def test_retry_queues_a_failed_task_again(tasks, database_url, schema):
    task_id = tasks("failed")
    assert cli(database_url, schema, "retry", task_id) == (0, f"task {task_id} queued again", "")
    assert status_of(database_url, schema, task_id) == "queued"


def test_retry_of_a_task_neither_failed_nor_canceled_exits_1(tasks, database_url, schema):
    task_id = tasks("completed")
    code, out, _ = cli(database_url, schema, "retry", task_id)
    assert (code, out) == (
        1,
        f"task {task_id} is completed, not failed or canceled: nothing changed",
    )
    assert status_of(database_url, schema, task_id) == "completed"


def test_retry_of_a_task_whose_key_another_task_holds_exits_2(tasks, database_url, schema):
    first = tasks("failed", key="order-42")
    tasks("queued", key="order-42")  # the key was free again once the first failed
    code, out, err = cli(database_url, schema, "retry", first)
    assert (code, out) == (2, "")
    assert err.startswith("hyrex-like: error: task ")
    assert f"{first} cannot be retried: its idempotency key 'order-42'" in err
    assert status_of(database_url, schema, first) == "failed"


def test_retry_of_an_unknown_id_exits_2(tasks, database_url, schema):
    code, _, err = cli(database_url, schema, "retry", NO_SUCH_ID)
    assert code == 2 and "does not exist" in err


# -------------------------------------------------------------------------------- prune


def test_prune_deletes_old_finished_tasks_and_says_how_many(tasks, database_url, schema):
    old = [tasks(s, age="3 days") for s in ("completed", "failed", "canceled", "completed")]
    kept = [tasks("completed", age="1 hour"), tasks("queued"), tasks("running")]
    code, out, _ = cli(database_url, schema, "prune", "--older-than", "2d")
    assert (code, out) == (
        0,
        "deleted 4 task(s) (completed, failed, canceled) finished more than 2d ago",
    )
    assert count(database_url, schema) == len(kept)
    assert not query(database_url, schema, "SELECT 1 FROM task WHERE id = ANY(%s::uuid[])", [old])
    assert not query(
        database_url, schema, "SELECT 1 FROM task_run WHERE task_id = ANY(%s::uuid[])", [old]
    )


def test_prune_of_chosen_statuses_keeps_the_others(tasks, database_url, schema):
    failed = tasks("failed", age="3 days")
    completed = tasks("completed", age="3 days")
    code, out, _ = cli(database_url, schema, "prune", "--older-than", "1d", "--status", "failed")
    assert (code, out) == (0, "deleted 1 task(s) (failed) finished more than 1d ago")
    assert status_of(database_url, schema, completed) == "completed"
    assert not query(database_url, schema, "SELECT 1 FROM task WHERE id = %s", [failed])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "7x"], "argument --older-than: invalid duration '7x': expected"),
        (["--older-than", "7d", "--status", "completed,queued"], "status 'queued' is not final"),
        (["--older-than", "7d", "--status", "done"], "unknown status 'done': expected"),
        ([], "the following arguments are required: --older-than"),
    ],
)
def test_prune_refuses_bad_flags_in_one_error_line(database_url, schema, args, message):
    code, out, err = cli(database_url, schema, "prune", *args)
    assert (code, out) == (2, "")
    assert message in error_line(err)


# --------------------------------------------------------------------- run-worker --retention


@pytest.mark.parametrize(
    ("value", "message"),
    [("soon", "invalid duration 'soon'"), ("0s", "must be more than 0, got '0s'")],
)
def test_run_worker_refuses_a_bad_retention_in_one_error_line(database_url, schema, value, message):
    code, _, err = cli(database_url, schema, "run-worker", "worker_app:hy", "--retention", value)
    assert code == 2
    assert f"argument --retention: {message}" in error_line(err)


def test_run_worker_help_says_what_retention_does(database_url, schema):
    _, out, _ = cli(database_url, schema, "run-worker", "--help")
    text = " ".join(out.split()).split("--retention DURATION", 2)[-1]
    for words in ("delete finished tasks", "7d", "default: off"):
        assert words in text


WIRED = "retention" in inspect.signature(Maintenance.__init__).parameters


@pytest.mark.skipif(not WIRED, reason="the worker does not run Retention yet (helper B wires it)")
def test_a_worker_with_retention_deletes_old_finished_tasks(
    tasks, app_worker, database_url, schema
):
    old = [tasks("completed", age="2 days") for _ in range(3)]
    waiting_parent = tasks("queued")  # delayed an hour: no worker takes it meanwhile
    query(
        database_url,
        schema,
        "UPDATE task SET run_after = now() + interval '1 hour' WHERE id = %s",
        [waiting_parent],
    )
    kept_child = tasks("completed", age="2 days", parent=waiting_parent)
    app_worker("--retention", "1s", "--heartbeat-interval", "0.2", "--stale-after", "30")
    wait_until(
        lambda: (
            not query(database_url, schema, "SELECT 1 FROM task WHERE id = ANY(%s::uuid[])", [old])
        ),
        timeout=30,
        what="the worker's retention to delete the old tasks",
    )
    assert status_of(database_url, schema, kept_child) == "completed"  # its parent waits


CANCELS = importlib.util.find_spec("hyrex_like.worker.cancels") is not None


@pytest.mark.skipif(not CANCELS, reason="the worker does not stop canceled tasks yet")
def test_cancel_stops_a_task_running_on_a_real_worker(wapp, app_worker, database_url, schema):
    handle = wapp.nap.send({"n": 1, "seconds": 600})
    app_worker("--processes", "1")
    wait_until(lambda: handle.refresh().status == "running", what="the nap to start")
    code, out, _ = cli(database_url, schema, "cancel", str(handle.id))
    assert code == 0 and out.startswith(f"task {handle.id}: stop requested (running on worker ")
    wait_until(lambda: handle.refresh().status == "canceled", what="the worker to stop it")
    after = wapp.record.send({"n": 2})
    wait_until(lambda: after.refresh().status == "completed", what="the worker to go on")
