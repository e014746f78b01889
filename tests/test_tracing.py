"""Tracing (#18): a span per send and per attempt, the attempt's span the send's child through
the trace context kept in the task row. Real workers run tests/apps/otel_app.py, whose
executors keep their spans in memory (the task `spans` returns them); this process's send spans
go to the same app's exporter here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import ROOT, done, query

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402

from .apps import otel_app  # noqa: E402


@pytest.fixture
def app(app_registry: Callable[[Any], Any]) -> Any:
    otel_app.exporter.clear()
    app_registry(otel_app.hy)
    return otel_app


def executor_spans(app: Any) -> list[dict[str, Any]]:
    """The attempt spans the worker's one executor has finished (running `spans` there)."""
    return done(app.spans.send()).result


def sent(name: str) -> list[Any]:
    """The send spans of task ``name`` finished in this process."""
    return [s for s in otel_app.exporter.get_finished_spans() if s.name == f"send {name}"]


def runs(spans: list[dict[str, Any]], task_id: Any) -> list[dict[str, Any]]:
    found = [
        s
        for s in spans
        if s["attributes"].get("hyrex_like.task_id") == str(task_id) and s["kind"] == "CONSUMER"
    ]
    return sorted(found, key=lambda s: s["attributes"]["hyrex_like.attempt"])


def hex_ids(span: Any) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def test_the_attempt_span_is_a_child_of_the_send_span(app, worker, database_url, schema):
    w = worker("otel_app:hy", "--processes", "1")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        handle = app.ok.send(7)
    assert done(handle).result == 7

    [send] = sent("ok")
    assert send.kind is trace.SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "hyrex_like",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "hyrex_like.task_id": str(handle.id),
    }
    [stored] = query(
        database_url, schema, "SELECT trace_context FROM task WHERE id = %s", [handle.id]
    )
    trace_id, span_id = hex_ids(send)
    assert stored[0]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")

    [run] = runs(executor_spans(app), handle.id)
    assert run["name"] == "run ok"
    assert run["kind"] == "CONSUMER"
    assert (run["trace_id"], run["parent_id"]) == (trace_id, span_id)
    assert run["status"] == "UNSET"
    assert run["attributes"]["hyrex_like.attempt"] == 1
    assert run["attributes"]["hyrex_like.outcome"] == "completed"
    assert run["attributes"]["messaging.destination.name"] == "default"
    assert w.proc.poll() is None


def test_every_send_form_makes_one_span_per_call(app, worker):
    worker("otel_app:hy", "--processes", "1")
    one = app.ok.with_config(queue="default", priority=3).send(1)
    keyed = app.ok.send(2, idempotency_key="k")
    many = app.ok.send_many([3, 4, 5])
    handles = [one, keyed, *many]
    for h in handles:
        done(h)
    spans = sent("ok")
    assert len(spans) == 3
    assert spans[2].attributes is not None
    assert spans[2].attributes["messaging.batch.message_count"] == 3
    attempts = executor_spans(app)
    for h, send in zip(handles, [spans[0], spans[1], spans[2], spans[2], spans[2]], strict=True):
        [run] = runs(attempts, h.id)
        assert (run["trace_id"], run["parent_id"]) == hex_ids(send)


def test_a_task_claimed_from_a_limited_queue_carries_the_context(app, worker):
    app.hy.queue("narrow", concurrency_limit=1)  # claimed by claim_limited_tasks
    worker("otel_app:hy", "--processes", "1")
    handles = [app.ok.with_config(queue="narrow").send(i) for i in range(3)]
    for h in handles:
        done(h)
    attempts = executor_spans(app)
    for h, send in zip(handles, sent("ok"), strict=True):
        [run] = runs(attempts, h.id)
        assert run["attributes"]["messaging.destination.name"] == "narrow"
        assert (run["trace_id"], run["parent_id"]) == hex_ids(send)


def test_a_retried_task_has_one_span_per_attempt_and_errors_are_recorded(app, worker):
    worker("otel_app:hy", "--processes", "1")
    flaky = app.flaky.send(1)
    boom = app.boom.send(2)
    assert done(flaky).status == "completed"
    assert done(boom).status == "failed"
    spans = executor_spans(app)

    [send] = sent("flaky")
    attempts = runs(spans, flaky.id)
    assert [s["attributes"]["hyrex_like.attempt"] for s in attempts] == [1, 2, 3]
    assert {(s["trace_id"], s["parent_id"]) for s in attempts} == {hex_ids(send)}
    assert [s["status"] for s in attempts] == ["ERROR", "ERROR", "UNSET"]
    assert [s["attributes"]["hyrex_like.outcome"] for s in attempts] == [
        "failed",
        "failed",
        "completed",
    ]
    [event] = attempts[0]["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "attempt 1 fails"
    assert "raise ValueError" in event["attributes"]["exception.stacktrace"]

    [run] = runs(spans, boom.id)
    assert run["status"] == "ERROR"
    assert run["events"][0]["attributes"]["exception.type"] == "RuntimeError"


def test_async_tasks_and_tasks_sent_inside_an_attempt_are_traced(app, worker):
    # side by side: async jobs run in `Lanes`, sync ones in the executor's loop
    worker("otel_app:hy", "--processes", "1", "--async-concurrency", "4")
    asynchronous = app.aok.send(1)
    outer = app.parent.send(2)
    slow = app.aslow.send(3)
    assert done(asynchronous).result == 1
    assert done(slow).status == "failed"
    child_id = done(outer).result
    spans = executor_spans(app)

    [run] = runs(spans, asynchronous.id)
    assert (run["trace_id"], run["parent_id"]) == hex_ids(sent("aok")[0])
    assert run["attributes"]["hyrex_like.outcome"] == "completed"

    [timed_out] = runs(spans, slow.id)
    assert timed_out["status"] == "ERROR"
    assert timed_out["attributes"]["hyrex_like.outcome"] == "timed_out"

    # in the executor: run parent > send ok (a child of that attempt)
    [parent_run] = runs(spans, outer.id)
    [child_send] = [s for s in spans if s["name"] == "send ok"]
    assert child_send["kind"] == "PRODUCER"
    assert child_send["attributes"]["hyrex_like.task_id"] == child_id
    assert (child_send["trace_id"], child_send["parent_id"]) == (
        parent_run["trace_id"],
        parent_run["span_id"],
    )


_OFF_SCRIPT = """
import json, sys, time
sys.path.insert(0, {tmp!r})
import off_app


def main():
    assert "opentelemetry" not in sys.modules, "imported with hyrex_like"
    handle = off_app.where.send()
    with off_app.hy.worker(processes=1, log_level="warning"):
        deadline = time.monotonic() + 60
        while not handle.refresh().done:
            assert time.monotonic() < deadline, "the task did not finish"
            time.sleep(0.02)
    print(json.dumps({{"id": str(handle.id), "executor": handle.result,
                      "here": "opentelemetry" in sys.modules}}))


if __name__ == "__main__":  # executors are spawned: they import this file again
    main()
"""


_OFF_APP = """
import sys
from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


@hy.task
def where() -> bool:
    return "opentelemetry" in sys.modules
"""


def test_tracing_off_imports_nothing_and_stores_no_context(database_url, schema, tmp_path: Path):
    (tmp_path / "off_app.py").write_text(_OFF_APP)
    script = tmp_path / "run_off.py"
    script.write_text(_OFF_SCRIPT.format(tmp=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "HYREX_LIKE_TRACING"}
    env |= {
        "HYREX_LIKE_DATABASE_URL": database_url,
        "HYREX_LIKE_SCHEMA": schema,
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"id": out["id"], "executor": False, "here": False}
    assert query(
        database_url, schema, "SELECT trace_context FROM task WHERE id = %s", [out["id"]]
    ) == [(None,)]


def test_the_setting_comes_from_the_argument_or_the_environment():
    from hyrex_like.config import Settings

    assert Settings.from_env({}).tracing is False
    assert Settings.from_env({"HYREX_LIKE_TRACING": "1"}).tracing is True
    assert Settings.from_env({"HYREX_LIKE_TRACING": "1"}, tracing=False).tracing is False
    assert otel_app.hy.settings.tracing is True
