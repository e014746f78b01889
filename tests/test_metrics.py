"""Prometheus metrics: a real worker's /metrics (run-worker --metrics-port), the cluster's
(hyrex-like metrics), observers isolated from each other, and the missing extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyrex_like import ConfigurationError
from hyrex_like.db import FinishedRow
from hyrex_like.metrics import WorkerMetrics, serve
from hyrex_like.observer import MultiObserver, RecordingObserver, WorkerObserver, overrides
from hyrex_like.states import RunStatus, TaskStatus
from hyrex_like.worker.completer import accepted

from .helpers import APPS, ROOT, count, query, run_cli, wait_until

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples | None:
    """Every sample of ``/metrics`` by sample name, or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none: use
    `metric` to assert they exist)."""
    return sum(
        v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items())
    )


def metric(samples: Samples, name: str, **labels: str) -> float:
    """As `value`, failing the test unless ``name`` has a sample with ``labels``."""
    have = [labels_ for labels_, _ in samples.get(name, [])]
    assert any(all(h.get(k) == x for k, x in labels.items()) for h in have), (name, labels, have)
    return value(samples, name, **labels)


COUNTERS = ("_total", "_count", "_sum", "_bucket")


@pytest.fixture
def mapp(app_registry: Any) -> Iterator[Any]:
    from .apps import metrics_app

    app_registry(metrics_app.hy).migrate()
    yield metrics_app


def test_worker_serves_attempts_durations_claims_restarts_and_no_queue_gauges(
    worker, mapp, tmp_path
):
    port = free_port()
    gate = tmp_path / "go"
    handles = [mapp.fine.send({"n": i}) for i in range(5)]
    handles += [mapp.broken.send({"n": i}) for i in range(2)]
    handles.append(mapp.crash.send({"n": 0}))
    held = mapp.gated.send({"path": str(gate)})
    w = worker("metrics_app:hy", "--processes", "2", "--metrics-port", str(port))
    for h in handles:
        h.wait(timeout=60)

    def during() -> Samples | None:  # the 8 others counted, the gated one still held
        s = scrape(port)
        done = s is not None and value(s, "hyrex_like_attempts_total") >= 8
        return s if done and value(s, "hyrex_like_in_flight") >= 1 else None

    first = wait_until(during, 60, 0.1, what="8 attempts counted, the gated one in flight")
    assert metric(first, "hyrex_like_in_flight") == 1
    assert metric(first, "hyrex_like_busy_executors") == 1
    gate.touch()
    held.wait(timeout=60)

    def settled() -> Samples | None:
        s = scrape(port)
        done = s is not None and value(s, "hyrex_like_attempts_total") >= 9
        return s if done and value(s, "hyrex_like_in_flight") == 0 else None

    s = wait_until(settled, 60, 0.1, what="9 attempts counted and none in flight")
    name = "hyrex_like_attempts_total"
    tasks = {labels["task"] for labels, _ in s[name]}
    fine, broken, crash, gated = (
        next(t for t in tasks if t.endswith(n)) for n in ("fine", "broken", "crash", "gated")
    )
    completed, failed = RunStatus.COMPLETED.value, RunStatus.FAILED.value
    assert metric(s, name, task=fine, status=completed) == 5
    assert metric(s, name, task=gated, status=completed) == 1
    assert metric(s, name, task=broken, status=failed) == 2
    assert metric(s, name, task=crash, status=RunStatus.LOST.value) == 1
    assert metric(s, name) == 9 == metric(s, name, queue="metered")
    # Durations: completed and failed attempts only (the lost one is not a run time).
    durations = "hyrex_like_attempt_duration_seconds"
    assert metric(s, f"{durations}_count", task=fine) == 5
    assert metric(s, f"{durations}_count", task=gated) == 1
    assert metric(s, f"{durations}_count", task=broken) == 2
    assert value(s, f"{durations}_count", task=crash) == 0
    assert metric(s, f"{durations}_count") == 8
    assert metric(s, f"{durations}_bucket", task=fine, le="+Inf") == 5
    assert metric(s, "hyrex_like_executor_restarts_total") == 1
    assert metric(s, "hyrex_like_claim_batch_size_count") >= 1
    assert metric(s, "hyrex_like_claim_batch_size_sum") >= 9  # every task was claimed once
    assert metric(s, "hyrex_like_busy_executors") == 0
    assert not [n for n in s if n.startswith(("hyrex_like_queue", "hyrex_like_workers"))]
    # Counters and histograms never go down between scrapes.
    for sample, samples in first.items():
        if sample.endswith(COUNTERS):
            for labels, before in samples:
                assert value(s, sample, **labels) >= before, (sample, labels)
    assert w.stop() == 0


def test_cluster_metrics_show_queue_depth_as_sql_counts_it(mapp, database_url, schema, tmp_path):
    for i in range(4):
        mapp.fine.send({"n": i})
    for i in range(3):
        mapp.later.send({"n": i}, delay=3600)
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(HYREX_LIKE_DATABASE_URL=database_url, HYREX_LIKE_SCHEMA=schema)
    cmd = [sys.executable, "-m", "hyrex_like", "metrics", "--port", str(port)]
    log = open(tmp_path / "metrics.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(APPS))
    try:
        s = wait_until(lambda: scrape(port), 30, 0.1, what="hyrex-like metrics listening")
        queued = TaskStatus.QUEUED.value
        ready = count(database_url, schema, f"status = '{queued}' AND run_after <= now()")
        waiting = count(database_url, schema, f"status = '{queued}' AND run_after > now()")
        assert (ready, waiting) == (4, 3)
        assert metric(s, "hyrex_like_queue_tasks", queue="metered", state="ready") == ready
        assert metric(s, "hyrex_like_queue_tasks", queue="later", state="waiting") == waiting
        assert metric(s, "hyrex_like_queue_tasks", state=RunStatus.RUNNING.value) == 0

        # (the age of a task sent a moment ago: its clock runs from the send)
        def aged() -> Samples | None:
            x = scrape(port)
            age = x and metric(x, "hyrex_like_queue_oldest_ready_seconds", queue="metered")
            return x if age and age > 0 else None

        s = wait_until(aged, 30, 0.2, what="the oldest ready task's age above 0")
        assert metric(s, "hyrex_like_queue_oldest_ready_seconds", queue="later") == 0
        assert metric(s, "hyrex_like_workers_alive") == 0
        assert metric(s, "hyrex_like_cluster_up") == 1
        assert not [n for n in s if n.startswith("hyrex_like_attempts")]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "metrics.log").read_text()
        log.close()


def test_a_failing_observer_never_stops_metrics_or_the_worker(mapp, caplog):
    class Broken(WorkerObserver):
        def attempts(self, rows: Any) -> None:
            raise RuntimeError("observer bug")

        def claimed(self, asked: int, got: int, seconds: float) -> None:
            raise RuntimeError("observer bug")

    metrics = WorkerMetrics()
    both = MultiObserver(Broken(), metrics)
    with mapp.hy.worker(processes=1, observer=both):
        for i, h in enumerate([mapp.fine.send({"n": i}) for i in range(3)]):
            assert h.wait(timeout=60).result == i
        wait_until(lambda: sum(v for _, v in _attempts(metrics)) >= 3, 30, what="3 attempts")
    failed = {r.getMessage() for r in caplog.records if "observer_failed" in r.getMessage()}
    assert len(failed) == 2, failed  # once per hook, however often it raised


def _attempts(metrics: WorkerMetrics) -> list[tuple[dict[str, str], float]]:
    [family] = [f for f in metrics.collect() if f.name == "hyrex_like_attempts"]
    return [(s.labels, s.value) for s in family.samples if s.name.endswith("_total")]


def test_hooks_nobody_overrides_are_skipped():
    class Steps(WorkerObserver):
        def step(self, name: str, seconds: float) -> None:
            pass

    assert not overrides(WorkerObserver(), "attempts")
    assert not overrides(None, "step")
    assert overrides(MultiObserver(WorkerObserver(), Steps()), "step")
    assert not overrides(MultiObserver(Steps()), "attempts")
    assert overrides(WorkerMetrics(), "attempts")


def test_without_the_extra_the_commands_exit_2_naming_it(tmp_path: Path, database_url, schema):
    # as if not installed: find_spec() gives None and importing it raises ImportError
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['prometheus_client'] = None\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(APPS), str(ROOT)])}
    for args in (("metrics",), ("run-worker", "metrics_app:hy", "--metrics-port", "0")):
        done = run_cli(*args, database_url=database_url, schema=schema, env=env)
        assert done.returncode == 2, done.stderr
        assert "pip install 'hyrex-like[metrics]'" in done.stderr


def test_run_worker_refuses_a_metrics_port_in_use(database_url, schema):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_cli(
            "run-worker",
            "metrics_app:hy",
            "--metrics-port",
            port,
            database_url=database_url,
            schema=schema,
        )
    assert done.returncode == 2
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_an_in_process_worker_frees_its_metrics_port_and_thread_when_it_stops(mapp):
    port = free_port()
    before = set(threading.enumerate())
    metrics = WorkerMetrics(port=port)
    with mapp.hy.worker(processes=1, observer=metrics):
        assert mapp.fine.send({"n": 1}).wait(timeout=60).result == 1
        s = wait_until(lambda: scrape(port), 30, 0.1, what="/metrics served")
        assert metric(s, "hyrex_like_worker_info") == 1
        assert metrics.server is not None
        served_by = metrics.server._thread
    assert metrics.server is None and not served_by.is_alive()
    assert scrape(port) is None
    serve(port).close()  # the port is free for the next worker

    # (the server's thread and its request threads are prometheus_client's, unnamed ones)
    def left() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in before and "hyrex" not in t.name]

    wait_until(lambda: not left(), 30, what="no metrics thread left")


def test_a_metrics_port_in_use_stops_an_in_process_worker_start(mapp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        recorder = RecordingObserver()
        w = mapp.hy.worker(processes=1, observer=MultiObserver(recorder, WorkerMetrics(port=port)))
        w.start()
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            w.join(60)
    assert not w.running
    assert recorder.counts["claimed"] == 0  # it never ran a claim


def test_a_late_write_for_a_task_taken_from_the_worker_is_not_counted(
    mapp, tmp_path, database_url, schema
):
    gate = tmp_path / "go"
    recorder, metrics = RecordingObserver(), WorkerMetrics()
    with mapp.hy.worker(processes=1, observer=MultiObserver(recorder, metrics)) as w:
        h = mapp.gated.send({"path": str(gate), "fail": True})
        running = f"id = '{h.id}' AND status = '{TaskStatus.RUNNING.value}'"
        wait_until(lambda: count(database_url, schema, running), 30, what="the task running")
        # As a rescuer would (its worker judged dead): the task is no longer this worker's.
        query(
            database_url,
            schema,
            "UPDATE task SET worker_id = NULL, status = %s WHERE id = %s",
            (TaskStatus.FAILED.value, h.id),
        )
        gate.touch()
        recorder.wait_for("written", 1, 60)
        w.stop()
    assert _attempts(metrics) == []
    minutes = query(database_url, schema, "SELECT count(*) FROM queue_minute")
    assert minutes == [(0,)]  # nor in the throughput hy.stats() reads


def _row(status: RunStatus, name: str = "t") -> FinishedRow:
    now = time.time()
    return FinishedRow(uuid.uuid4(), name, 1, status, True, None, None, None, None, now, now)


def test_only_what_the_database_recorded_is_counted_with_its_status():
    """`accepted` maps a written batch as finish_runs does (tests above run it for real)."""
    done, paused, gone, done_late, rejected, canceled = (
        _row(RunStatus.COMPLETED),
        _row(RunStatus.CANCELED),  # stopped for its workflow's pause
        _row(RunStatus.FAILED),  # not returned: the guard refused it
        _row(RunStatus.COMPLETED),  # returned without a status: the guard refused it
        _row(RunStatus.COMPLETED),  # refused by the database, rewritten as failed
        _row(RunStatus.CANCELED),  # its cancel was requested: canceled
    )
    now = datetime.now(UTC)
    returned = [
        (paused.task_id, TaskStatus.PAUSED.value, now, 1),
        (done_late.task_id, None, now, 1),
        (rejected.task_id, TaskStatus.FAILED.value, now, 1),
        (canceled.task_id, TaskStatus.CANCELED.value, now, 1),
    ]
    fixed = rejected._replace(status=RunStatus.FAILED)
    rows = [done, paused, gone, done_late, rejected, canceled]
    got = accepted(rows, returned, {rejected.task_id: fixed})  # type: ignore[arg-type]
    assert [(r.task_id, r.status) for r in got] == [
        (done.task_id, RunStatus.COMPLETED),
        (paused.task_id, RunStatus.INTERRUPTED),
        (rejected.task_id, RunStatus.FAILED),
        (canceled.task_id, RunStatus.CANCELED),
    ]


def test_run_worker_refuses_a_metrics_host_that_does_not_resolve(database_url, schema):
    args = ("--metrics-port", "0", "--metrics-host", "no-such-host.invalid")
    done = run_cli("run-worker", "metrics_app:hy", *args, database_url=database_url, schema=schema)
    assert done.returncode == 2, done.stderr
    assert "cannot resolve --metrics-host 'no-such-host.invalid'" in done.stderr
