"""Worker logs: JSON lines with the task's identity on every state change; no passwords."""

from __future__ import annotations

import urllib.parse

import pytest

from .helpers import count, done, json_log, read_events, run_cli, wait_until, worker_ids

STATE_EVENTS = {
    "task_claimed",
    "task_started",
    "task_completed",
    "task_retry_scheduled",
    "task_failed",
    "task_timed_out",
    "task_lost",
}
PASSWORD = "s3cretpw"


def test_json_logs_are_one_object_per_line_bound_to_task_and_worker(
    wapp, app_worker, database_url, schema
):
    ok = wapp.record.send({"n": 1})
    retried = wapp.fail_first.send({"n": 2})
    failed = wapp.never_works.send({"n": 3})
    lost = wapp.exit_first.send({"n": 4})
    timed_out = wapp.too_slow_bad_handler.send({"n": 5})
    w = app_worker("--processes", "2", "--log-format", "json", "--log-level", "debug")
    for h in (ok, retried, failed, lost, timed_out):
        done(h, 30)
    assert w.stop() == 0
    [worker_id] = worker_ids(database_url, schema)
    events = json_log(w)  # fails on any line that is not a JSON object
    assert all(isinstance(e, dict) and "event" in e and "timestamp" in e for e in events)
    names = {h.id: h.task_name for h in (ok, retried, failed, lost, timed_out)}
    state = [e for e in events if e["event"] in STATE_EVENTS]
    for e in state:
        assert e["task_id"] in {str(i) for i in names}, e
        assert e["task_name"] == names[next(i for i in names if str(i) == e["task_id"])], e
        assert isinstance(e["attempt"], int) and e["attempt"] >= 1, e
        assert e["worker_id"] == str(worker_id), e

    def kinds(handle):
        return [
            (e["event"], e["attempt"])
            for e in state
            if e["task_id"] == str(handle.id) and e["event"] not in ("task_claimed", "task_started")
        ]

    assert kinds(ok) == [("task_completed", 1)]
    assert kinds(retried) == [("task_retry_scheduled", 1), ("task_completed", 2)]
    assert kinds(failed) == [("task_failed", 1)]
    assert kinds(lost) == [("task_lost", 1), ("task_retry_scheduled", 1), ("task_completed", 2)]
    assert kinds(timed_out) == [("task_timed_out", 1), ("task_failed", 1)]
    claimed = [e["task_id"] for e in state if e["event"] == "task_claimed"]
    assert sorted(claimed) == sorted(
        str(h.id) for h in (ok, retried, retried, failed, lost, lost, timed_out)
    )
    assert {"worker_started", "worker_stopping", "worker_stopped"} <= {e["event"] for e in events}


def test_console_log_at_info_level_shows_failures_not_each_success(wapp, app_worker):
    ok = wapp.record.send({"n": 1})
    failed = wapp.never_works.send({"n": 2})
    w = app_worker("--processes", "1")
    done(ok, 30)
    done(failed, 30)
    assert w.stop() == 0
    text = w.log()
    assert "worker_started" in text
    assert "task_failed" in text and str(failed.id) in text
    # the success path is debug only: nothing per successful task at the default level
    assert "task_claimed" not in text and "task_completed" not in text and str(ok.id) not in text


def _with_password(url: str, password: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or parts.password or not parts.port:
        pytest.skip("needs a postgresql:// URL without a password")
    user = parts.username or "postgres"
    host = changes.get("host", parts.hostname)
    port = changes.get("port", str(parts.port))
    path = changes.get("path", parts.path)
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{user}:{password}@{host}:{port}", path, parts.query, "")
    )


def test_worker_never_prints_the_database_password(wapp, app_worker, database_url, schema):
    url = _with_password(database_url, PASSWORD)
    retried = wapp.fail_first.send({"n": 1})
    lost = wapp.exit_first.send({"n": 2})
    w = app_worker(
        "--processes",
        "1",
        "--database-url",
        url,
        "--log-level",
        "debug",
        env={"HYREX_LIKE_DATABASE_URL": url},
    )
    done(retried, 30)
    done(lost, 30)
    wait_until(lambda: "worker_started" in w.log(), 10)
    assert w.stop() == 0
    text = w.log()
    assert "worker_started" in text and "task_completed" in text
    assert "***" in text  # the URL is shown, redacted
    assert PASSWORD not in text


@pytest.mark.parametrize(
    "changes",
    [{"port": "1"}, {"path": "/no_such_database_xyz"}, {"port": "notaport"}],
    ids=["refused", "unknown-database", "malformed"],
)
def test_worker_errors_never_print_the_database_password(database_url, schema, changes):
    url = _with_password(database_url, PASSWORD, **changes)
    proc = run_cli(
        "run-worker",
        "worker_app:hy",
        "--processes",
        "1",
        "--database-url",
        url,
        "--startup-timeout",
        "1",
        database_url=url,
        schema=schema,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "hyrex-like: error:" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_shutdown_counts_interrupted_attempts_apart_and_logs_each_requeued_task(
    wapp, app_worker, out_dir, database_url, schema
):
    running = wapp.nap.send({"n": 1, "seconds": 60})  # outlives the grace period
    w = app_worker(
        "--processes",
        "1",
        "--prefetch",
        "4",
        "--busy-after",
        "60",
        "--grace-period",
        "0.5",
        "--log-format",
        "json",
    )
    wait_until(lambda: read_events(out_dir, "start"), 30, what="the long task to start")
    waiting = [wapp.record.send({"n": i}) for i in range(3)]  # claimed behind it, not started
    wait_until(lambda: count(database_url, schema, "status = 'running'") == 4, 30)
    assert w.stop() == 0
    events = json_log(w)
    [summary] = [e for e in events if e["event"] == "worker_stopped"]
    assert (summary["interrupted"], summary["failed_attempts"], summary["given_back"]) == (1, 0, 3)
    [interrupted] = [e for e in events if e["event"] == "task_interrupted"]
    assert (interrupted["task_id"], interrupted["attempt"]) == (str(running.id), 1)
    [requeued] = [e for e in events if e["event"] == "task_requeued"]
    assert requeued["task_id"] == str(running.id)
    given_back = [i for e in events if e["event"] == "tasks_given_back" for i in e["task_ids"]]
    assert sorted(given_back) == sorted(str(h.id) for h in waiting)
    assert not [e for e in events if e["event"] in ("task_failed", "task_retry_scheduled")]
    for handle in (running, *waiting):
        assert handle.refresh().status == "queued"


def test_log_level_critical_is_accepted_and_silences_the_worker(
    wapp, app_worker, database_url, schema
):
    ok = wapp.record.send({"n": 1})
    failed = wapp.never_works.send({"n": 2})  # an error-level event, below critical
    w = app_worker("--processes", "1", "--log-level", "critical")
    assert done(ok, 30).status == "completed"
    assert done(failed, 30).status == "failed"
    assert w.stop() == 0
    assert w.log() == ""
    proc = run_cli("init-db", "--log-level", "critical", database_url=database_url, schema=schema)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("schema is up to date")
