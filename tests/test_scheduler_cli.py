"""The scheduler in deployment (#15), with real processes: a worker fires its app's schedules
by default and runs their tasks, ``--no-scheduler`` fires none; ``run-scheduler`` fires them
alone and exits 0 on SIGTERM (2 for an app with nothing scheduled); ``schedules`` lists them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from hyrex_like.logs import get_logger
from hyrex_like.worker.scheduler import Scheduler

from .helpers import APPS, ROOT, count, query, run_cli, wait_until

WORKER_ARGS = ("--processes", "1", "--heartbeat-interval", "0.5", "--stale-after", "5")


def test_a_worker_fires_its_apps_schedules_and_runs_them(registry, worker, database_url, schema):
    registry.migrate()  # (so the test can read the tables before the worker made them)
    w = worker("scheduled_app:hy", *WORKER_ARGS)
    wait_until(
        lambda: count(database_url, schema, "task_name = 'beat' AND status = 'completed'") >= 2,
        what="two ticks of beat run",
    )
    rows = query(
        database_url,
        schema,
        "SELECT scheduled_for, result FROM task WHERE task_name = 'beat' AND status = 'completed'",
    )
    for tick, result in rows:  # the task saw its own tick
        assert tick.microsecond == 0 and datetime.fromisoformat(result) == tick
    assert w.stop() == 0
    assert "nightly_report" in w.log() and "worker_started" in w.log()


def test_a_worker_with_no_scheduler_fires_nothing(registry, worker, database_url, schema):
    registry.migrate()
    w = worker("scheduled_app:hy", *WORKER_ARGS, "--no-scheduler")
    # Up and beating for over two seconds: two ticks of beat would have fired by now.
    wait_until(
        lambda: query(
            database_url,
            schema,
            "SELECT 1 FROM worker WHERE heartbeat_at > started_at + interval '2.5 s'",
        ),
        what="the worker beating for 2.5 s",
    )
    assert count(database_url, schema) == 0
    assert count(database_url, schema, table="schedule_tick") == 0
    assert w.stop() == 0


def _run_scheduler(database_url: str, schema: str, log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env["HYREX_LIKE_DATABASE_URL"] = database_url
    env["HYREX_LIKE_SCHEMA"] = schema
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hyrex_like", "run-scheduler", "scheduled_app:hy"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            cwd=str(APPS),
            start_new_session=True,
        )


def test_run_scheduler_fires_the_schedules_alone_and_exits_0_on_sigterm(
    registry, database_url, schema, tmp_path
):
    registry.migrate()
    log = tmp_path / "scheduler.log"
    proc = _run_scheduler(database_url, schema, log)
    try:
        wait_until(
            lambda: count(database_url, schema, "task_name = 'beat'") >= 2 or proc.poll(),
            what="two ticks of beat",
        )
        assert proc.poll() is None, log.read_text()
        assert count(database_url, schema, "status <> 'queued'") == 0  # it runs no task
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert "scheduler_started" in log.read_text() and "scheduler_stopped" in log.read_text()


def test_run_scheduler_refuses_an_app_with_nothing_scheduled(database_url, schema):
    done = run_cli("run-scheduler", "basic_app:hy", database_url=database_url, schema=schema)
    assert done.returncode == 2
    assert "'basic_app:hy' has no scheduled tasks" in done.stderr


def test_schedules_lists_each_schedule_with_its_next_tick_and_last_task(
    app_registry, database_url, schema
):
    from .apps import scheduled_app

    hy = app_registry(scheduled_app.hy)
    hy.migrate()
    scheduler = Scheduler(lambda: hy.store.connect(worker=True), hy, get_logger("hyrex_like.tests"))
    try:
        made = scheduler.run_once(datetime.now(UTC))
    finally:
        scheduler.stop()
    assert made >= 1  # beat's tick at least
    [(beat_id,)] = query(
        database_url,
        schema,
        "SELECT id FROM task WHERE task_name = 'beat' ORDER BY scheduled_for DESC LIMIT 1",
    )

    table = run_cli("schedules", "scheduled_app:hy", database_url=database_url, schema=schema)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == "TASK SCHEDULE NEXT TICK LAST TICK LAST TASK STATUS".split()
    by_task = {line.split()[0]: line for line in lines[1:]}
    assert sorted(by_task) == ["beat", "hourly", "nightly_report"]
    assert "every 1s" in by_task["beat"] and str(beat_id) in by_task["beat"]
    assert by_task["beat"].rstrip().endswith("queued")
    assert "cron 0 3 * * * (Europe/Paris)" in by_task["nightly_report"]

    listed = run_cli(
        "schedules", "scheduled_app:hy", "--json", database_url=database_url, schema=schema
    )
    assert listed.returncode == 0, listed.stderr
    infos = {i["task_name"]: i for i in json.loads(listed.stdout)}
    assert infos["beat"]["last_task_id"] == str(beat_id)
    assert infos["beat"]["last_task_status"] == "queued"
    assert infos["hourly"]["catch_up"] == "all"
    assert datetime.fromisoformat(infos["nightly_report"]["next_tick"]).tzinfo is not None
