"""What a task sees and returns inside an executor: types, async, context, results."""

from __future__ import annotations

import uuid

from .helpers import done, query, read_events, worker_ids


def test_async_task_runs_on_an_event_loop_in_the_executor(wapp, app_worker):
    handles = [wapp.async_work.send({"n": n}) for n in range(3)]
    w = app_worker("--processes", "1")
    for n, h in enumerate(handles):
        assert done(h, 30).status == "completed", h.task_runs
        assert h.result == {"n": n, "loop_running": True}
    assert w.stop() == 0


def test_payload_arrives_as_the_annotated_model_instance(wapp, app_worker):
    handle = wapp.arg_type.send({"n": 5})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed", handle.task_runs
    assert handle.result == "Item:5"
    assert w.stop() == 0


def test_returned_pydantic_model_is_stored_as_json(wapp, app_worker):
    handle = wapp.returns_model.send({"n": 4})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed", handle.task_runs
    assert handle.result == wapp.Doubled(n=4, doubled=8, tags=["a", "b"])  # rebuilt, typed
    stored = {"n": 4, "doubled": 8, "tags": ["a", "b"]}
    assert handle.task_runs[0].result == handle.row.result == stored
    assert w.stop() == 0


def test_returned_value_that_cannot_be_dumped_fails_once_with_a_clear_error(
    wapp, app_worker, out_dir
):
    handle = wapp.returns_undumpable.send({"n": 1})  # max_retries=3
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "failed"
    [run] = handle.task_runs  # not retried: the same code would return the same value
    assert run.status == "failed"
    assert run.error_type == "PayloadNotSerializable"
    assert "cannot be stored as JSON" in run.error_message
    assert "returns_undumpable" in run.error_message
    assert handle.last_error["type"] == "PayloadNotSerializable"
    assert len(read_events(out_dir, "start")) == 1
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["PayloadNotSerializable"]
    assert w.stop() == 0


def test_returned_value_containing_error_completes_the_task(wapp, app_worker):
    handle = wapp.returns_error_key.send({"n": 3})
    w = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    assert handle.result == {"error": "this is data, not a failure", "status": "failed", "n": 3}
    assert [r.status for r in handle.task_runs] == ["completed"]
    assert handle.last_error is None
    assert w.stop() == 0


def test_context_inside_a_task_and_subtasks_sent_from_it_carry_parent_and_root(
    wapp, app_worker, database_url, schema
):
    top = wapp.whoami.with_config(queue="ctxq", priority=7).send({"n": 2})
    w = app_worker("--processes", "2")
    assert done(top, 30).status == "completed", top.task_runs
    ctx = top.result
    [worker_id] = worker_ids(database_url, schema)
    assert ctx["task_id"] == str(top.id)
    assert ctx["task_name"] == "whoami"
    assert ctx["attempt_number"] == 1
    assert ctx["queue"] == "ctxq"
    assert ctx["priority"] == 7
    assert ctx["parent_id"] is None and ctx["root_id"] is None
    assert ctx["worker_id"] == str(worker_id)

    child = done(wapp.hy.get_handle(ctx["child"]), 30)
    assert (child.parent_id, child.root_id) == (top.id, top.id)
    assert child.result["parent_id"] == str(top.id)
    assert child.result["root_id"] == str(top.id)
    assert child.result["task_id"] == ctx["child"]
    assert child.result["queue"] == "default"  # a new send uses the task's own config

    grandchild = done(wapp.hy.get_handle(child.result["child"]), 30)
    assert grandchild.parent_id == uuid.UUID(ctx["child"])
    assert grandchild.root_id == top.id
    assert grandchild.result["root_id"] == str(top.id)
    assert grandchild.result["child"] is None
    assert w.stop() == 0


def test_a_task_returning_none_stores_sql_null_and_a_value_its_json(
    wapp, app_worker, database_url, schema
):
    nothing = wapp.returns_none.send({"n": 1})
    something = wapp.record.send({"n": 5})
    w = app_worker("--processes", "1")
    assert done(nothing, 30).status == "completed"
    assert done(something, 30).status == "completed"
    rows = query(
        database_url,
        schema,
        "SELECT t.id, t.result IS NULL, r.result IS NULL, r.result "
        "FROM task t JOIN task_run r ON r.task_id = t.id ORDER BY t.created_at",
    )
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (nothing.id, True, True),  # not the JSON value null
        (something.id, False, False),
    ]
    assert rows[1][3] == 5 == something.result
    assert w.stop() == 0


def test_the_executor_reads_a_job_s_fields_where_job_wire_puts_them():
    from hyrex_like.worker import protocol as e

    job = e.Job(uuid.uuid4(), "name", "q", 5, '{"n": 1}', 3, 0, None, None, None)
    wire = job.wire()
    assert wire[e._W_KEY] == job.task_id.bytes
    assert wire[e._W_NAME] == job.task_name
    assert wire[e._W_ARGS] == job.args
    assert wire[e._W_ATTEMPT] == job.attempt
    assert e.Job.from_wire(wire) == job
