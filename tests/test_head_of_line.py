"""Claim-ahead without head-of-line blocking: a claimed task never waits behind a long task
while an executor of this worker or another is free. Real workers, a real database; each task
body notes when it starts (tests/apps/hol_app.py)."""

from __future__ import annotations

import collections
import json
import os
import pickle
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .helpers import APPS, ROOT, Worker, count, json_log, read_events, wait_until


@pytest.fixture
def happ(app_registry: Callable[[Any], Any]) -> Any:
    """tests/apps/hol_app.py, its registry bound to this test's schema (for sending)."""
    from .apps import hol_app

    app_registry(hol_app.hy)
    return hol_app


@pytest.fixture
def code_worker(
    database_url: str, schema: str, out_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Start `hol_app.main`: a worker from code, with any `WorkerOptions` (the CLI has no
    flag for some); any still running at the end are killed."""
    started: list[Worker] = []

    def start(**options: Any) -> Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
        env.update(
            HYREX_LIKE_DATABASE_URL=database_url,
            HYREX_LIKE_SCHEMA=schema,
            HYREX_TEST_OUT=str(out_dir),
        )
        log_path = tmp_path / f"code-worker-{len(started)}.log"
        with open(log_path, "a") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys, hol_app; sys.exit(hol_app.main())"]
                + [json.dumps(options)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                cwd=str(APPS),
                start_new_session=True,
            )
        w = Worker(proc, log_path)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def _starts(out_dir: Path) -> dict[int, dict[str, Any]]:
    return {e["n"]: e for e in read_events(out_dir, "start")}


def _send_in_order(happ: Any, database_url: str, *groups: list[dict[str, Any]]) -> None:
    """One transaction; each group claimed before the next (priority 9, 8, ...)."""
    with psycopg.connect(database_url) as conn:
        for i, group in enumerate(groups):
            happ.work.with_config(priority=9 - i).send_many(group, conn=conn)
        conn.commit()


def _warm_up(happ: Any, out_dir: Path, n: int = 10) -> None:
    """Short tasks first, so the worker knows `work` as a short task and batches it."""
    happ.work.send_many([{"n": -1 - i} for i in range(n)])
    wait_until(lambda: len(read_events(out_dir, "end")) >= n, 30, what="the warm-up")


def test_short_tasks_queued_behind_a_long_one_start_long_before_it_ends(
    happ, app_worker, out_dir, database_url, schema
):
    w = app_worker("--processes", "2", app="hol_app:hy")
    _warm_up(happ, out_dir)
    # One claim: the long task first, the short ones behind it (a batch per executor).
    _send_in_order(happ, database_url, [{"n": 0, "seconds": 5.0}], [{"n": i} for i in range(1, 31)])
    wait_until(lambda: len(_starts(out_dir)) >= 41, 30, what="every task started")
    starts = _starts(out_dir)
    long_start = starts[0]["t"]
    late = {n: round(e["t"] - long_start, 2) for n, e in starts.items() if n > 0}
    assert max(late.values()) < 2.5, late  # the long one ends 5 s after it started
    wait_until(lambda: count(database_url, schema, "status = 'completed'") == 41, 30)
    assert count(database_url, schema, "true", table="task_run") == 41  # each ran once
    assert w.stop() == 0


def test_short_tasks_a_busy_worker_claimed_are_handed_over_to_an_idle_one(
    happ, app_worker, out_dir, database_url, schema
):
    busy = app_worker("--processes", "2", "--log-format", "json", app="hol_app:hy")
    _warm_up(happ, out_dir)
    # each executor gets a long task with five short ones behind it
    _send_in_order(
        happ,
        database_url,
        [{"n": 0, "seconds": 8.0}],
        [{"n": i} for i in range(2, 7)],
        [{"n": 1, "seconds": 8.0}],
        [{"n": i} for i in range(7, 12)],
    )
    wait_until(lambda: {0, 1} <= set(_starts(out_dir)), 30, what="both long tasks started")
    idle = app_worker("--processes", "1", app="hol_app:hy")
    wait_until(lambda: len(_starts(out_dir)) >= 22, 30, what="every short task started")
    starts = _starts(out_dir)
    long_pids = {starts[0]["pid"], starts[1]["pid"]}
    long_end = min(starts[0]["t"], starts[1]["t"]) + 8.0
    short = [starts[n] for n in range(2, 12)]
    assert all(e["t"] < long_end - 3.0 for e in short), [e["t"] - long_end for e in short]
    assert len(long_pids) == 2 and not {e["pid"] for e in short} & long_pids
    assert {e["pid"] for e in short} <= set(idle.executor_pids())  # the idle worker ran them
    handed = [e for e in json_log(busy) if e.get("event") == "tasks_handed_over"]
    assert sum(e["count"] for e in handed) >= 1
    wait_until(lambda: count(database_url, schema, "status = 'completed'") == 22, 30)
    # handed over before they started: no run row, no attempt counted
    assert count(database_url, schema, "true", table="task_run") == 22
    assert count(database_url, schema, "attempt_count <> 1") == 0
    assert busy.stop() == 0 and idle.stop() == 0


def test_frequent_take_backs_run_every_task_exactly_once(
    happ, code_worker, out_dir, database_url, schema
):
    total = 600
    # every fifth task naps past the (lowered) threshold: take-backs all along the way
    happ.work.send_many([{"n": i, "seconds": 0.012 if i % 5 == 0 else 0.0} for i in range(total)])
    w = code_worker(processes=2, busy_after=0.004, log_level="debug", log_format="json")
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") == total,
        120,
        what="every task completed",
    )
    ran = collections.Counter(e["n"] for e in read_events(out_dir, "start"))
    assert sorted(ran) == list(range(total))
    assert max(ran.values()) == 1, [n for n, c in ran.items() if c > 1]
    assert count(database_url, schema, "true", table="task_run") == total
    events = [e.get("event") for e in json_log(w)]
    assert events.count("tasks_taken_back") >= 5
    assert w.stop() == 0


def test_an_executor_hands_back_its_unstarted_jobs_at_once_and_keeps_serving(
    happ, out_dir, monkeypatch
):
    """The take-back signal, on one executor: sent while it starts it waits for the handler
    (and finds nothing); sent while a task sleeps it answers SKIP for the jobs behind that task,
    those received and those still in the pipe, before the task's own result; later batches
    still run."""
    from hyrex_like.dispatcher import Dispatcher, WorkerOptions
    from hyrex_like.worker.protocol import Job, encode_batch

    monkeypatch.setenv("HYREX_TEST_OUT", str(out_dir))

    def job(n: int, seconds: float = 0.0) -> Job:
        args = json.dumps({"n": n, "seconds": seconds})
        return Job(uuid.uuid4(), "work", "default", 5, args, 1, 0, None, None, None)

    def answer() -> list[Any]:
        assert ex.conn.poll(30), "no answer"
        return list(pickle.loads(ex.conn.recv_bytes()))

    d = Dispatcher(happ.hy, "tests.apps.hol_app:hy", WorkerOptions(processes=1))
    ex = d.pool.spawner.spawn(0)  # spawned: a fresh interpreter, ~0.3 s to start
    try:
        d.pool.spawner.take_back(ex)  # at once: the child is still starting
        assert ex.conn.poll(30) and ex.conn.recv()[0] == "ready"
        long, queued, top_up = job(0, 2.0), [job(1), job(2)], [job(3)]
        ex.conn.send_bytes(encode_batch([long, *queued]))
        ex.conn.send_bytes(encode_batch(top_up))  # waits unread in the pipe
        wait_until(lambda: read_events(out_dir, "start"), 30, what="the long task to start")
        d.pool.spawner.take_back(ex)
        assert answer() == [("skip", j.task_id.bytes, 1) for j in [*queued, *top_up]]
        [result] = answer()
        assert (result[0], result[1]) == ("ok", long.task_id.bytes)
        d.pool.spawner.take_back(ex)  # with nothing held: no answer
        later = job(4)
        ex.conn.send_bytes(encode_batch([later]))
        [result] = answer()
        # (a take-back that reached it only after the batch arrived may hand this one back)
        assert result[1] == later.task_id.bytes and result[0] in ("ok", "skip")
        last = job(5)
        ex.conn.send_bytes(encode_batch([last]))
        assert [r[:2] for r in answer()] == [("ok", last.task_id.bytes)]
        assert ex.process.exitcode is None
        started = sorted(e["n"] for e in read_events(out_dir, "start"))
        assert started in ([0, 4, 5], [0, 5])
    finally:
        d.pool.spawner.kill(ex)


def test_a_stop_while_jobs_are_taken_back_hands_them_back_unstarted(
    happ, code_worker, out_dir, database_url, schema
):
    w = code_worker(processes=1, busy_after=0.3, grace_period=20, log_format="json")
    _warm_up(happ, out_dir, 3)
    _send_in_order(happ, database_url, [{"n": 0, "seconds": 3.0}], [{"n": i} for i in range(1, 6)])
    wait_until(lambda: 0 in _starts(out_dir), 30, what="the long task to start")
    w.signal(signal.SIGTERM)  # the drain, then the take-back (at 0.3 s) while it drains
    assert w.proc.wait(30) == 0
    assert set(_starts(out_dir)) == {-3, -2, -1, 0}  # none of the short ones started
    assert count(database_url, schema, "status = 'completed'") == 3 + 1
    assert count(database_url, schema, "status = 'queued' AND attempt_count = 0") == 5
    assert count(database_url, schema, "true", table="task_run") == 3 + 1
