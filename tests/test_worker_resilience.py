"""Crashes and stops: a killed worker, dropped database connections, SIGTERM and SIGINT."""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .helpers import (
    backend_pids_of,
    count,
    done,
    query,
    read_events,
    run_cli,
    server_address,
    terminate_backends,
    wait_until,
    worker_ids,
)


def test_worker_killed_with_sigkill_has_its_tasks_requeued_by_another_worker(
    wapp, app_worker, out_dir, database_url, schema
):
    handle = wapp.long_first.send({"n": 1})  # attempt 1 runs for two minutes
    first = app_worker("--processes", "1", "--heartbeat-interval", "0.5")
    [start] = wait_until(lambda: read_events(out_dir, "start"), 30, what="attempt 1")
    executor_pid = start["pid"]
    # a body's start reaches the database once it has run a moment; before, a crash undoes it
    started = "SELECT 1 FROM task_run WHERE started_at IS NOT NULL"
    wait_until(lambda: query(database_url, schema, started), 10, what="the start written")
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    # its executor dies with it, so attempt 1 cannot go on running next to attempt 2
    wait_until(lambda: not _alive(executor_pid), 10, what="the orphaned executor to die")
    assert handle.refresh().status == "running"

    second = app_worker("--processes", "1", "--stale-after", "3", "--heartbeat-interval", "0.5")
    assert done(handle, 30).status == "completed"
    first_id, second_id = worker_ids(database_url, schema)
    runs = handle.task_runs
    assert [(r.attempt_number, r.status, r.worker_id) for r in runs] == [
        (1, "lost", first_id),
        (2, "completed", second_id),
    ]
    assert runs[0].error_type == "WorkerLost"
    assert handle.result == 2
    assert query(database_url, schema, "SELECT status FROM worker WHERE id = %s", (first_id,)) == [
        ("lost",)
    ]
    assert "lost_tasks_requeued" in second.log()
    assert second.stop() == 0


def test_worker_survives_terminated_database_backends_and_runs_each_task_once(
    wapp, app_worker, out_dir, database_url, schema
):
    total = 300
    wapp.nap.send_many([{"n": i, "seconds": 0.01} for i in range(total)])
    w = app_worker("--processes", "2", "--prefetch", "4")
    killed_rounds = 0
    for threshold in (20, 120, 220):
        wait_until(lambda t=threshold: len(read_events(out_dir, "end")) >= t, 60)
        pids = wait_until(
            lambda: backend_pids_of(database_url, w.pid),
            20,
            what="the worker's database connections",
        )
        assert terminate_backends(database_url, pids) >= 1
        killed_rounds += 1
        reconnects = killed_rounds
        wait_until(
            lambda r=reconnects: w.log().count("database_reconnected") >= r,
            30,
            what="the worker to reconnect",
        )
    wait_until(lambda: count(database_url, schema, "status = 'completed'") == total, 120)
    assert w.proc.poll() is None
    ran = collections.Counter(e["n"] for e in read_events(out_dir, "start"))
    assert sorted(ran) == list(range(total))
    assert [n for n, times in ran.items() if times > 1] == []
    assert count(database_url, schema, "status = 'completed'", table="task_run") == total
    assert count(database_url, schema, "true", table="task_run") == total
    assert count(database_url, schema, "attempt_count <> 1") == 0
    assert w.stop() == 0


def test_worker_rides_out_a_database_outage_keeping_finished_results_until_it_is_back(
    wapp, app_worker, out_dir, db_proxy, database_url, schema
):
    total = 24
    wapp.nap.send_many([{"n": i, "seconds": 0.3} for i in range(total)])
    db_proxy.up()
    w = app_worker(
        "--processes",
        "2",
        "--prefetch",
        "4",
        "--busy-after",  # 0.3 s tasks claimed ahead: none is handed over meanwhile
        "5",
        "--database-url",
        db_proxy.url,
        env={"HYREX_LIKE_DATABASE_URL": db_proxy.url},
    )
    wait_until(lambda: len(read_events(out_dir, "end")) >= 2, 30)
    db_proxy.down()
    ended_at_cut = len(read_events(out_dir, "end"))
    # the executors finish what they were handed; the results wait in the worker's memory
    wait_until(lambda: len(read_events(out_dir, "end")) >= ended_at_cut + 3, 30)
    wait_until(lambda: "database_unavailable" in w.log(), 30)
    written_while_down = count(database_url, schema, "status = 'completed'")
    assert written_while_down <= ended_at_cut
    assert w.proc.poll() is None
    db_proxy.up()
    wait_until(lambda: count(database_url, schema, "status = 'completed'") == total, 60)
    assert "database_reconnected" in w.log()
    ran = collections.Counter(e["n"] for e in read_events(out_dir, "start"))
    assert sorted(ran) == list(range(total))
    assert max(ran.values()) == 1
    assert count(database_url, schema, "true", table="task_run") == total
    assert w.stop() == 0


def test_worker_started_while_the_database_is_down_waits_for_it(
    wapp, app_worker, db_proxy, database_url, schema
):
    handle = wapp.record.send({"n": 1})
    w = app_worker(
        "--processes",
        "1",
        "--database-url",
        db_proxy.url,
        "--startup-timeout",
        "30",
        env={"HYREX_LIKE_DATABASE_URL": db_proxy.url},
    )
    wait_until(lambda: "database_unavailable" in w.log(), 20)
    assert w.proc.poll() is None
    db_proxy.up()
    assert done(handle, 30).status == "completed"
    assert w.stop() == 0


def test_a_task_left_running_by_a_worker_that_is_gone_is_requeued_and_run(
    wapp, app_worker, database_url, schema
):
    """Running, but its worker has no row (or is no longer running): an earlier rescue skipped
    it while it was locked, say. Not found through a stale heartbeat, it is found by the full
    rescue a worker makes every --stale-after seconds, after its first one at start."""
    w = app_worker("--processes", "1", "--stale-after", "1", "--heartbeat-interval", "0.2")
    assert done(wapp.record.send({"n": 1}), 30).status == "completed"  # the worker is up
    ghost = uuid.uuid4()
    # sent and marked as a vanished worker's claim leaves it (running, attempt 1, a run open
    # whose body began) in one transaction, so the live worker never sees it queued
    with psycopg.connect(database_url) as conn:
        handle = wapp.record.send({"n": 2}, conn=conn)
        conn.execute(
            f"UPDATE {schema}.task SET status = 'running', attempt_count = 1, worker_id = %s "
            "WHERE id = %s",
            [ghost, handle.id],
        )
        conn.execute(
            f"INSERT INTO {schema}.task_run (task_id, attempt_number, status, worker_id, "
            "started_at) VALUES (%s, 1, 'running', %s, now())",
            [handle.id, ghost],
        )
    assert done(handle, 30).status == "completed"
    assert [(r.attempt_number, r.status) for r in handle.task_runs] == [
        (1, "lost"),
        (2, "completed"),
    ]
    assert w.stop() == 0


def test_sigterm_finishes_running_tasks_and_gives_back_unstarted_ones(
    wapp, app_worker, out_dir, database_url, schema
):
    handles = wapp.nap.send_many([{"n": i, "seconds": 1.5} for i in range(8)])
    # 1.5 s tasks held behind the running ones (--busy-after: none is handed over before)
    w = app_worker(
        "--processes", "2", "--prefetch", "4", "--busy-after", "10", "--grace-period", "20"
    )
    starts = wait_until(
        lambda: len(read_events(out_dir, "start")) == 2 and read_events(out_dir, "start"), 30
    )
    # every task is claimed (2 executors x prefetch 4): two run, six wait in executors
    assert count(database_url, schema, "status = 'running'") == 8
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert time.monotonic() - t0 < 10
    running = {e["n"] for e in starts}
    assert {e["n"] for e in read_events(out_dir, "end")} == running
    assert len(read_events(out_dir, "start")) == 2
    for i, h in enumerate(handles):
        h.refresh()
        if i in running:
            assert (h.status, [r.status for r in h.task_runs]) == ("completed", ["completed"])
        else:
            assert (h.status, h.attempt_count, h.task_runs) == ("queued", 0, []), i
    assert query(database_url, schema, "SELECT status FROM worker") == [("stopped",)]


def test_a_drain_signal_sent_while_an_executor_starts_waits_for_its_handler(wapp):
    """Executors learn that the worker is stopping from SIGUSR1. Sent before an executor has
    its handler in place (a spawned one imports for ~0.3 s first), it would kill it: the
    dispatcher blocks the signal while it starts one, so it is delivered, and obeyed, later."""
    from hyrex_like.dispatcher import Dispatcher, WorkerOptions
    from hyrex_like.worker.protocol import Job

    d = Dispatcher(wapp.hy, "tests.apps.worker_app:hy", WorkerOptions(processes=1))
    ex = d.pool.spawner.spawn(0)  # spawned, not forked: a fresh interpreter
    try:
        d.pool.spawner.signal_drain(ex)  # at once: the child is still starting
        assert ex.conn.poll(30), "the executor never became ready"
        assert ex.conn.recv()[0] == "ready"
        job = Job(uuid.uuid4(), "record", "default", 5, '{"n": 1}', 1, 0, None, None, None)
        ex.conn.send([job.wire()])
        assert ex.conn.poll(30)
        assert ex.conn.recv() == [("skip", job.task_id.bytes, 1)]  # drained: not started
        assert ex.process.exitcode is None
    finally:
        d.pool.spawner.kill(ex)


def test_an_app_that_takes_over_the_drain_signal_does_not_keep_executors_from_draining(
    registry, capfd
):
    """The executor imports the app after it installs its SIGUSR1 handler; an app (or a library
    it imports) that installs its own would leave the executor deaf to a stopping worker. The
    executor puts its handler back, and says so."""
    from hyrex_like.dispatcher import Dispatcher, WorkerOptions
    from hyrex_like.worker.protocol import Job

    from .apps import sigusr1_app

    sigusr1_app.hy.configure(**registry.settings.model_dump())
    d = Dispatcher(sigusr1_app.hy, "tests.apps.sigusr1_app:hy", WorkerOptions(processes=1))
    ex = d.pool.spawner.spawn(0)
    try:
        assert ex.conn.poll(30), "the executor never became ready"
        assert ex.conn.recv()[0] == "ready"  # the app is imported by now
        d.pool.spawner.signal_drain(ex)
        job = Job(uuid.uuid4(), "echo", "default", 5, "1", 1, 0, None, None, None)
        ex.conn.send([job.wire()])
        assert ex.conn.poll(30)
        assert ex.conn.recv() == [("skip", job.task_id.bytes, 1)]  # drained, and alive
        assert ex.process.exitcode is None
        out, err = capfd.readouterr()
        assert "drain_signal_handler_replaced" in out + err
    finally:
        d.pool.spawner.kill(ex)
        sigusr1_app.hy.close()


def test_a_forked_executor_also_says_the_app_took_over_the_drain_signal(worker):
    """Forked from a parent that imported the app, the executor inherits the app's handler:
    it puts its own in place and says so, as a spawned one does."""
    w = worker("sigusr1_app:hy", "--processes", "1")
    wait_until(lambda: "drain_signal_handler_replaced" in w.log(), 30, what="the warning")
    assert w.stop() == 0


def test_sigterm_requeues_a_task_that_outlives_the_grace_period(
    wapp, app_worker, out_dir, database_url, schema
):
    handle = wapp.nap.send({"n": 1, "seconds": 60})
    w = app_worker("--processes", "1", "--grace-period", "1")
    [start] = wait_until(lambda: read_events(out_dir, "start"), 30)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert 1.0 <= time.monotonic() - t0 < 8
    handle.refresh()
    assert handle.status == "queued"
    [run] = handle.task_runs
    assert (run.attempt_number, run.status) == (1, "interrupted")
    assert run.finished_at is not None
    assert not _alive(start["pid"])
    assert read_events(out_dir, "end") == []


def test_second_signal_stops_the_worker_at_once(wapp, app_worker, out_dir, database_url, schema):
    handle = wapp.nap.send({"n": 1, "seconds": 60})
    w = app_worker("--processes", "1", "--grace-period", "60")
    [start] = wait_until(lambda: read_events(out_dir, "start"), 30)
    w.signal(signal.SIGTERM)
    wait_until(lambda: "worker_stopping" in w.log(), 10)
    assert w.proc.poll() is None  # still inside its 60 s grace period
    t0 = time.monotonic()
    w.signal(signal.SIGINT)
    w.proc.wait(10)
    assert time.monotonic() - t0 < 5
    assert not _alive(start["pid"])
    handle.refresh()
    assert handle.status == "queued"
    assert [r.status for r in handle.task_runs] == ["interrupted"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_stop_like_sigterm(wapp, app_worker, database_url, schema, sig):
    handle = wapp.record.send({"n": 1})
    w = app_worker("--processes", "1")
    done(handle, 30)
    pids = w.executor_pids()
    w.signal(sig)
    assert w.proc.wait(30) == 0
    assert query(database_url, schema, "SELECT status FROM worker") == [("stopped",)]
    wait_until(lambda: not any(_alive(p) for p in pids), 10, what="executors gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_interrupted_attempt_does_not_use_up_a_retry(
    wapp, app_worker, out_dir, database_url, schema
):
    handle = wapp.long_then_flaky.send({"n": 1})  # max_retries=1
    w = app_worker("--processes", "1", "--grace-period", "0.5")
    wait_until(lambda: read_events(out_dir, "start"), 30)
    w.signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    second = app_worker("--processes", "1")
    assert done(handle, 30).status == "completed"
    assert [(r.attempt_number, r.status) for r in handle.task_runs] == [
        (1, "interrupted"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert handle.row.failure_count == 1
    assert second.stop() == 0


def test_worker_connections_notice_a_dead_link_and_keep_to_index_plans(registry):
    """The worker's statements run on threads that must not hang on a link that died silently
    (TCP keepalives and a send timeout turn it into an error), and its planner settings hold."""
    conn = registry.store.connect(worker=True)
    try:
        params = conn.info.get_parameters()
        assert params["keepalives"] == "1"
        assert params["tcp_user_timeout"] == "30000"
        for show in ("SHOW enable_seqscan", "SHOW enable_hashjoin", "SHOW enable_mergejoin"):
            assert conn.execute(show).fetchone() == ("off",)
    finally:
        conn.close()
    plain = registry.store.connect()
    try:
        assert "keepalives" not in plain.info.get_parameters()
        assert plain.execute("SHOW enable_seqscan").fetchone() == ("on",)
    finally:
        plain.close()


# ------------------------------------------------------- refusals: stop at once, exit code 2

PASSWORD = "s3cretpw"


def _url_with(database_url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(database_url)
    if parts.scheme not in ("postgresql", "postgres") or parts.password:
        pytest.skip("needs a postgresql:// URL without a password")
    user = changes.get("user", parts.username or "postgres")
    host, given_port = server_address(database_url)  # the server given, never a default
    port = changes.get("port", str(given_port))
    query_ = changes.get("query", parts.query)
    netloc = f"{user}:{PASSWORD}@{host}:{port}"
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, changes.get("path", parts.path), query_, "")
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"path": "/no_such_database_xyz"}, 'database "no_such_database_xyz" does not exist'),
        ({"user": "no_such_role_xyz"}, 'role "no_such_role_xyz" does not exist'),
        ({"port": "notaport"}, "port 'notaport' is not a number"),
        ({"query": "sslmode=bogus"}, 'invalid sslmode value: "bogus"'),
    ],
    ids=["missing-database", "missing-role", "malformed-port", "malformed-option"],
)
def test_a_database_that_refuses_the_worker_for_good_stops_it_at_once_with_exit_code_2(
    database_url, schema, changes, reason
):
    url = _url_with(database_url, **changes)
    t0 = time.monotonic()
    proc = run_cli(
        "run-worker",
        "worker_app:hy",
        "--processes",
        "1",
        "--database-url",
        url,
        "--startup-timeout",
        "30",  # a refusal must not wait for it
        database_url=url,
        schema=schema,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert elapsed < 10, f"took {elapsed:.1f}s: the refusal was retried"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    [line] = lines
    assert line.startswith("hyrex-like: error:"), line
    assert reason in line
    assert "--database-url" in line and "HYREX_LIKE_DATABASE_URL" in line
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "database_unavailable" not in proc.stderr


def test_refusal_is_judged_by_sqlstate_or_libpq_message_and_unknown_errors_are_waited_out():
    """Pure logic: what counts as permanent (stop) and what as an outage (wait)."""
    from hyrex_like.errors import ConfigurationError, DatabaseError
    from hyrex_like.outages import refusal

    def wrapped(exc: Exception) -> DatabaseError:
        try:  # as the store raises it: its own error, the driver's in __context__
            try:
                raise exc
            except Exception:
                raise DatabaseError("cannot connect to postgresql://h/db: ...") from None
        except DatabaseError as out:
            return out

    e = psycopg.errors.lookup
    assert refusal(e("28P01")("password authentication failed")) is not None
    assert refusal(e("28000")("no")) is not None
    assert refusal(e("3D000")("no")) is not None
    assert refusal(e("42501")("permission denied for schema x")) is not None
    assert refusal(e("57P03")("the database system is starting up")) is None
    assert refusal(e("53300")("sorry, too many clients already")) is None
    assert refusal(e("57P01")("terminating connection due to administrator command")) is None
    assert refusal(ConfigurationError("invalid database URL")) is not None
    op = psycopg.OperationalError
    fatal = 'connection to server at "h", port 5432 failed: FATAL:  '
    assert refusal(wrapped(op(fatal + 'password authentication failed for user "u"'))) == (
        'password authentication failed for user "u"'
    )
    assert refusal(wrapped(op(fatal + 'database "d" does not exist'))) is not None
    assert refusal(wrapped(op(fatal + 'role "r" does not exist'))) is not None
    assert refusal(wrapped(op(fatal + "no pg_hba.conf entry for host x, user u"))) is not None
    for transient in (
        fatal + "the database system is starting up",
        fatal + "the database system is shutting down",
        fatal + "sorry, too many clients already",
        fatal + "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'connection to server at "h", port 5432 failed: Connection refused',
        "server closed the connection unexpectedly",
        "failed to resolve host 'db': [Errno -3] Temporary failure in name resolution",
        "something nobody has seen before",
    ):
        assert refusal(wrapped(op(transient))) is None, transient


@contextlib.contextmanager
def _login_role(database_url: str) -> Iterator[str]:
    """A superuser role of its own for one worker, so a test can take its LOGIN away."""
    role = "hl_refused_" + uuid.uuid4().hex[:8]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} SUPERUSER LOGIN")
    try:
        yield role
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _refuse_login(database_url: str, role: str, worker_pid: int) -> None:
    """Take LOGIN away from ``role`` and cut the worker's connections: it must reconnect."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} NOLOGIN")
    pids = wait_until(lambda: backend_pids_of(database_url, worker_pid), 20)
    assert terminate_backends(database_url, pids) >= 1


def _log_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_worker_whose_reconnect_is_refused_for_good_stops_with_exit_code_2(
    wapp, app_worker, out_dir, database_url, schema
):
    """A role that may no longer log in: once running, the worker retries for --startup-timeout
    seconds, logging each refusal, then stops with exit code 2. A result it could not write is
    logged by task id (that task runs again once another worker rescues it)."""
    first = wapp.record.send({"n": 1})  # the schema exists before the worker starts
    with _login_role(database_url) as role:
        url = _url_with(database_url, user=role)
        w = app_worker(
            "--processes",
            "1",
            "--startup-timeout",
            "5",
            "--log-format",
            "json",
            "--database-url",
            url,
            env={"HYREX_LIKE_DATABASE_URL": url},
        )
        assert done(first, 30).status == "completed"
        held = wapp.until_released.send({"n": 2})
        wait_until(lambda: read_events(out_dir, "start"), 30, what="the held task to start")
        _refuse_login(database_url, role, w.pid)
        wait_until(
            lambda: "database_refused" in w.log() or w.proc.poll() is not None,
            30,
            what="a refused reconnect",
        )
        assert w.proc.poll() is None, "the worker stopped at the first refusal"
        (out_dir / "release-2").touch()  # it finishes while the worker cannot write
        wait_until(lambda: read_events(out_dir, "end"), 30, what="the held task to end")
        assert w.proc.wait(60) == 2
        text = w.log()
    events = _log_events(text)
    refused = [e for e in events if e["event"] == "database_refused"]
    assert refused and refused[0]["error"] == f'role "{role}" is not permitted to log in'
    assert "HYREX_LIKE_DATABASE_URL" in refused[0]["hint"]
    [lost] = [e for e in events if e["event"] == "worker_results_lost"]
    assert lost["task_ids"] == [str(held.id)]
    [line] = [t for t in text.splitlines() if t.startswith("hyrex-like: error:")]
    assert "while it was running" in line
    assert f'role "{role}" is not permitted to log in' in line
    assert "HYREX_LIKE_DATABASE_URL" in line
    assert PASSWORD not in text
    assert held.refresh().status == "running"  # left to the rescuers, its result lost


def test_a_refusal_that_heals_within_the_window_does_not_stop_the_worker(
    wapp, app_worker, out_dir, database_url, schema
):
    """A refusal while running can be a passing fault (an LDAP server briefly away, a database
    created again, a role whose LOGIN comes back): the worker keeps what finished meanwhile,
    reconnects once it is let in, and goes on."""
    first = wapp.record.send({"n": 1})
    with _login_role(database_url) as role:
        url = _url_with(database_url, user=role)
        w = app_worker(
            "--processes",
            "1",
            "--startup-timeout",
            "300",
            "--database-url",
            url,
            env={"HYREX_LIKE_DATABASE_URL": url},
        )
        assert done(first, 30).status == "completed"
        held = wapp.until_released.send({"n": 2})
        wait_until(lambda: read_events(out_dir, "start"), 30, what="the held task to start")
        _refuse_login(database_url, role, w.pid)
        wait_until(
            lambda: "database_refused" in w.log() or w.proc.poll() is not None,
            30,
            what="a refused reconnect",
        )
        assert w.proc.poll() is None, "the worker stopped at the first refusal"
        (out_dir / "release-2").touch()
        wait_until(lambda: read_events(out_dir, "end"), 30, what="the held task to end")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} LOGIN")
        assert done(held, 60).status == "completed"
        assert [r.status for r in held.task_runs] == ["completed"]
        assert done(wapp.record.send({"n": 3}), 30).status == "completed"
        assert "database_reconnected" in w.log()
        assert w.proc.poll() is None
        assert w.stop() == 0
    assert [e["n"] for e in read_events(out_dir, "start")] == [2]  # ran once
