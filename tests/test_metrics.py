"""Prometheus metrics: a real worker's /metrics (run-worker --metrics-port), the cluster's
(hyrex-like metrics), observers isolated from each other, and the missing extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyrex_like.metrics import WorkerMetrics
from hyrex_like.observer import MultiObserver, WorkerObserver, overrides
from hyrex_like.states import RunStatus, TaskStatus

from .helpers import APPS, ROOT, count, run_cli, wait_until

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
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items())
    )


@pytest.fixture
def mapp(app_registry: Any) -> Iterator[Any]:
    from .apps import metrics_app

    app_registry(metrics_app.hy).migrate()
    yield metrics_app


def test_worker_serves_attempts_durations_claims_restarts_and_no_queue_gauges(worker, mapp):
    port = free_port()
    handles = [mapp.fine.send({"n": i}) for i in range(5)]
    handles += [mapp.broken.send({"n": i}) for i in range(2)]
    handles.append(mapp.crash.send({"n": 0}))
    w = worker("metrics_app:hy", "--processes", "2", "--metrics-port", str(port))
    for h in handles:
        h.wait(timeout=60)

    def settled() -> Samples | None:
        s = scrape(port)
        done = s is not None and value(s, "hyrex_like_attempts_total") >= 8
        return s if done and value(s, "hyrex_like_in_flight") == 0 else None

    s = wait_until(settled, 60, 0.2, what="8 attempts counted and none in flight")
    name = "hyrex_like_attempts_total"
    tasks = {labels["task"] for labels, _ in s[name]}
    fine, broken, crash = (
        next(t for t in tasks if t.endswith(n)) for n in ("fine", "broken", "crash")
    )
    assert value(s, name, task=fine, status=RunStatus.COMPLETED.value) == 5
    assert value(s, name, task=broken, status=RunStatus.FAILED.value) == 2
    assert value(s, name, task=crash, status=RunStatus.LOST.value) == 1
    assert value(s, name) == 8 == value(s, name, queue="metered")
    assert value(s, "hyrex_like_attempt_duration_seconds_count", task=fine) == 5
    assert value(s, "hyrex_like_attempt_duration_seconds_count") >= 7
    assert value(s, "hyrex_like_attempt_duration_seconds_bucket", task=fine, le="+Inf") == 5
    assert value(s, "hyrex_like_executor_restarts_total") >= 1
    assert value(s, "hyrex_like_claim_batch_size_count") >= 1
    assert value(s, "hyrex_like_claim_batch_size_sum") >= 8  # every task was claimed once
    assert value(s, "hyrex_like_running") == 0
    assert not [n for n in s if n.startswith(("hyrex_like_queue", "hyrex_like_workers"))]
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
        assert value(s, "hyrex_like_queue_tasks", queue="metered", state="ready") == ready
        assert value(s, "hyrex_like_queue_tasks", queue="later", state="waiting") == waiting
        assert value(s, "hyrex_like_queue_tasks", state=RunStatus.RUNNING.value) == 0
        assert value(s, "hyrex_like_queue_oldest_ready_seconds", queue="metered") >= 0
        assert value(s, "hyrex_like_workers_alive") == 0
        assert value(s, "hyrex_like_cluster_up") == 1
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
