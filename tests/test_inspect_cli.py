"""The inspection commands with real workers (issue #18): ``hy.list_workers()``,
``hyrex-like workers``, ``tasks show ID``, ``tasks list``, ``status [--watch]`` and the
``queues`` columns from ``hy.stats()``."""

from __future__ import annotations

import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import pytest

from hyrex_like import HyrexRegistry, InvalidTaskOption
from hyrex_like.states import WorkerStatus

from .helpers import APPS, ROOT, Worker, done, query, run_cli, wait_until, worker_ids


@pytest.fixture
def bapp(app_registry: Callable[[HyrexRegistry], HyrexRegistry]) -> Any:
    from .apps import basic_app

    app_registry(basic_app.hy)
    return basic_app


def test_workers_are_listed_while_running_and_after_they_stop(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    bapp: Any,
    database_url: str,
    schema: str,
) -> None:
    assert registry.list_workers() == []
    w = worker("basic_app:hy", "--processes", "2", "--queue", "default")
    wait_until(lambda: len(worker_ids(database_url, schema)) == 1, 60, what="the worker row")
    done(bapp.echo.send({"n": 1}), 30)
    [info] = registry.list_workers()
    assert (info.status, info.processes, info.queues, info.running) == (
        WorkerStatus.RUNNING,
        2,
        ["default"],
        0,
    )
    assert info.pid == w.pid and "echo" in info.task_names and info.stopped_at is None
    listed = run_cli("workers", "--json", database_url=database_url, schema=schema)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["status"], row["pid"]) == (str(info.id), "running", w.pid)
    human = run_cli("workers", database_url=database_url, schema=schema)
    assert human.stdout.splitlines()[0].split()[:4] == ["WORKER", "HOST", "PID", "STATUS"]
    assert str(info.id) in human.stdout
    assert w.stop() == 0
    [after] = registry.list_workers()
    assert after.status == WorkerStatus.STOPPED and after.stopped_at is not None
    assert registry.list_workers(recent=0) == []  # ended before now: not among the last 0 s
    with pytest.raises(InvalidTaskOption, match="recent"):
        registry.list_workers(recent=-1)


def test_tasks_show_prints_every_run_with_its_error_and_traceback(
    worker: Callable[..., Worker], bapp: Any, database_url: str, schema: str
) -> None:
    worker("basic_app:hy", "--processes", "1")
    handle = done(bapp.fail_once.send({"n": 7}), 60)
    assert handle.status == "completed" and len(handle.task_runs) == 2
    shown = run_cli("tasks", "show", str(handle.id), database_url=database_url, schema=schema)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"id:             {handle.id}" in out and "fail_once" in out
    assert "attempt 1: failed" in out and "attempt 2: completed" in out
    first = handle.task_runs[0]
    assert f"error: {first.error_type}: {first.error_message}" in out
    assert "    | Traceback (most recent call last):" in out
    as_json = run_cli(
        "tasks", "show", str(handle.id), "--json", database_url=database_url, schema=schema
    )
    task = json.loads(as_json.stdout)
    assert (task["id"], task["task_name"], task["status"]) == (
        str(handle.id),
        "fail_once",
        "completed",
    )
    assert [r["status"] for r in task["runs"]] == ["failed", "completed"]
    assert task["runs"][0]["traceback"].startswith("Traceback")
    missing = run_cli("tasks", "show", str(uuid.uuid4()), database_url=database_url, schema=schema)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    malformed = run_cli("tasks", "show", "nope", database_url=database_url, schema=schema)
    assert malformed.returncode == 2 and "is not a task id" in malformed.stderr


def test_tasks_show_names_the_parent_and_the_children(
    worker: Callable[..., Worker],
    app_registry: Callable[[HyrexRegistry], HyrexRegistry],
    database_url: str,
    schema: str,
) -> None:
    from .apps import inspect_app

    app_registry(inspect_app.hy)
    worker("inspect_app:hy", "--processes", "1")
    parent = done(inspect_app.parent.send(2), 60)
    cli = _cli(database_url, schema)
    shown = json.loads(cli("tasks", "show", str(parent.id), "--json").stdout)
    assert shown["parent"] is None and len(shown["children"]) == 2
    assert {c["task_name"] for c in shown["children"]} == {"ok"}
    child = shown["children"][0]["id"]
    assert json.loads(cli("tasks", "show", child, "--json").stdout)["parent"]["id"] == str(
        parent.id
    )
    out = cli("tasks", "show", str(parent.id)).stdout
    assert "children: 2" in out and f"  {child} ok " in out
    assert f"parent: {parent.id} parent " in cli("tasks", "show", child).stdout


def _cli(database_url: str, schema: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, database_url=database_url, schema=schema)

    return cli


def _listed(cli: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    out = cli("tasks", "list", "--json", *args)
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_tasks_list_filters_pages_and_refuses_bad_options(
    worker: Callable[..., Worker],
    bapp: Any,
    registry: HyrexRegistry,
    database_url: str,
    schema: str,
) -> None:
    cli = _cli(database_url, schema)
    worker("basic_app:hy", "--processes", "1", "--queue", "default")
    completed = [done(bapp.echo.send({"n": n}), 60).id for n in range(3)]
    retried = done(bapp.fail_once.send({"n": 1}), 60).id
    elsewhere = [bapp.echo.with_config(queue="elsewhere").send({"n": n}).id for n in range(2)]
    delayed = bapp.echo.send({"n": 9}, delay=3600).id
    assert registry.cancel(elsewhere[0])
    everything = {*completed, retried, *elsewhere, delayed}

    rows = _listed(cli)
    assert {r["id"] for r in rows} == {str(i) for i in everything} and len(rows) == 7
    for row in rows:
        assert {"id", "task_name", "queue", "status", "created_at"} <= row.keys()
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)  # newest
    by_id = {r["id"]: r for r in rows}
    assert (by_id[str(retried)]["task_name"], by_id[str(retried)]["status"]) == (
        "fail_once",
        "completed",
    )
    assert by_id[str(retried)]["attempts"] == 2
    assert by_id[str(elsewhere[1])]["queue"] == "elsewhere"
    datetime.fromisoformat(by_id[str(delayed)]["created_at"])

    table = cli("tasks", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "QUEUE", "STATUS", "ATTEMPTS", "CREATED"]
    assert len(lines) == 8 and table.stderr == ""  # one page: no cursor hint
    [line] = [ln for ln in lines if ln.startswith(str(retried))]
    assert line.split()[1:5] == ["fail_once", "default", "completed", "2"]

    def ids(*args: str) -> set[str]:
        return {r["id"] for r in _listed(cli, *args)}

    assert ids("--status", "queued") == {str(elsewhere[1]), str(delayed)}
    assert ids("--status", "CANCELED") == {str(elsewhere[0])}
    assert ids("--queue", "elsewhere") == {str(i) for i in elsewhere}
    assert ids("--name", "fail_once") == {str(retried)}
    assert ids("--name", "echo", "--status", "completed") == {str(i) for i in completed}
    assert ids("--since", "1h") == {str(i) for i in everything}
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert ids("--since", later) == set()
    assert ids("--since", "2000-01-01T00:00") == {str(i) for i in everything}
    assert ids("--name", "no_such_task") == set()
    empty = cli("tasks", "list", "--name", "no_such_task")
    assert empty.returncode == 0 and "no task matches" in empty.stdout

    seen: list[str] = []
    pages = 0
    cursor: list[str] = []
    while True:
        page = cli("tasks", "list", "--json", "--limit", "3", *cursor)
        assert page.returncode == 0, page.stderr
        got = [r["id"] for r in json.loads(page.stdout)]
        assert 1 <= len(got) <= 3
        seen += got
        pages += 1
        hint = [ln for ln in page.stderr.splitlines() if ln.startswith("more: --after ")]
        if not hint:
            break
        cursor = ["--after", hint[0].removeprefix("more: --after ")]
        assert pages < 10, "the cursor does not move on"
    assert pages >= 3 and len(seen) == len(set(seen)) == 7
    assert seen == [r["id"] for r in rows]  # the same order as one big page

    for bad, words in [
        (["--status", "bogus"], "is not a task status"),
        (["--status", ""], "is not a task status"),
        (["--since", "yesterday"], "neither a duration"),
        (["--limit", "0"], "at least 1"),
        (["--limit", "ten"], "at least 1"),
        (["--after", "not-a-cursor"], ""),
    ]:
        refused = cli("tasks", "list", *bad)
        assert refused.returncode == 2, (bad, refused.stdout, refused.stderr)
        assert words in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("hyrex-like"), refused.stderr


def _expected(database_url: str, schema: str, window: int) -> dict[str, dict[str, int]]:
    """Per queue, what the tables hold: tasks ready, waiting and running, and the attempts
    that ended in the last ``window`` minutes (test-side SQL, not the library's)."""
    out: dict[str, dict[str, int]] = {}
    for name, ready, waiting, running in query(
        database_url,
        schema,
        "SELECT queue, count(*) FILTER (WHERE status = 'queued' AND run_after <= now()), "
        "count(*) FILTER (WHERE status = 'queued' AND run_after > now()), "
        "count(*) FILTER (WHERE status = 'running') FROM task GROUP BY queue",
    ):
        out[name] = {"ready": ready, "waiting": waiting, "running": running}
    for name, completed, failed in query(
        database_url,
        schema,
        "SELECT t.queue, count(*) FILTER (WHERE r.status = 'completed'), "
        "count(*) FILTER (WHERE r.status IN ('failed', 'timed_out', 'lost')) "
        "FROM task_run r JOIN task t ON t.id = r.task_id "
        "WHERE r.finished_at > now() - make_interval(mins => %s) GROUP BY t.queue",
        (window,),
    ):
        out.setdefault(name, {"ready": 0, "waiting": 0, "running": 0})
        out[name] |= {"completed": completed, "failed": failed}
    for counts in out.values():
        counts.setdefault("completed", 0)
        counts.setdefault("failed", 0)
    return out


_FIELDS = ("ready", "waiting", "running", "completed", "failed")


def test_status_and_queues_show_what_the_database_holds(
    worker: Callable[..., Worker],
    bapp: Any,
    qapp: Any,
    registry: HyrexRegistry,
    database_url: str,
    schema: str,
) -> None:
    cli = _cli(database_url, schema)
    worker("basic_app:hy", "--processes", "1", "--queue", "default")
    worker("queue_app:hy", "--processes", "1", "--queue", "payments")
    for n in range(3):
        done(bapp.echo.send({"n": n}), 60)
    done(bapp.fail_once.send({"n": 1}), 60)  # a failed attempt, then a completed one
    assert done(bapp.sleepy.send(30.0), 60).status == "failed"  # two timed out attempts
    sent = time.time()
    stuck = [bapp.echo.with_config(queue="stuck").send({"n": n}) for n in range(2)]
    bapp.echo.send({"n": 9}, delay=3600)  # waiting
    long = qapp.pay.send({"n": 1, "seconds": 120})
    wait_until(lambda: long.refresh().status == "running", 60, what="the long task to run")
    registry.queue("stuck", concurrency_limit=4)
    registry.pause_queue("stuck")
    expected = _expected(database_url, schema, 5)
    assert {q: [expected[q][f] for f in _FIELDS] for q in expected} == {
        "default": [0, 1, 0, 4, 3],
        "stuck": [2, 0, 0, 0, 0],
        "payments": [0, 0, 1, 0, 0],
    }

    def stats() -> dict[str, Any]:
        out = cli("status", "--json")
        assert out.returncode == 0, out.stderr
        as_json: dict[str, Any] = json.loads(out.stdout)
        return as_json

    def matches() -> dict[str, Any] | None:  # the throughput tallies may land a moment later
        got = stats()
        numbers = {q["queue"]: {f: q[f] for f in _FIELDS} for q in got["queues"]}
        return got if numbers == expected else None

    got = wait_until(matches, 30, interval=0.5, what="status --json to match the tables")
    assert got["window_minutes"] == 5 and got["workers_alive"] == 2
    by_queue = {q["queue"]: q for q in got["queues"]}
    assert [q["queue"] for q in got["queues"]] == ["default", "payments", "stuck"]
    assert 7 / 6 <= by_queue["default"]["per_minute"] <= 7 / 5  # 5 whole minutes and this one
    assert by_queue["stuck"]["paused"] is True and by_queue["stuck"]["concurrency_limit"] == 4
    oldest = by_queue["stuck"]["oldest_ready_seconds"]
    assert 0 <= oldest <= time.time() - sent + 1
    assert by_queue["default"]["oldest_ready_seconds"] is None

    table = cli("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "in the last 5 min" in lines[0]
    assert lines[1].split() == [
        "QUEUE",
        "READY",
        "WAITING",
        "RUNNING",
        "OLDEST",
        "DONE",
        "FAILED",
        "PER/MIN",
        "LIMIT",
        "PAUSED",
    ]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    assert rows["default"][:7] == ["default", "0", "1", "0", "-", "4", "3"]
    assert 1.1 <= float(rows["default"][7]) <= 1.4 and rows["default"][8:] == ["-", "no"]
    assert rows["stuck"][1:4] == ["2", "0", "0"] and rows["stuck"][8:] == ["4", "yes"]
    assert rows["stuck"][4].endswith("s") and rows["payments"][3] == "1"
    assert lines[5] == "workers alive: 2"
    assert cli("status", "--window", "1", "--json").returncode == 0
    assert cli("status", "--window", "1440", "--json").returncode == 0
    for bad in ("0", "x", "1441"):
        refused = cli("status", "--window", bad)
        assert refused.returncode == 2 and "minutes from 1 to 1440" in refused.stderr

    queues = cli("queues")
    assert queues.returncode == 0, queues.stderr
    qlines = queues.stdout.splitlines()
    assert qlines[0].split() == ["QUEUE", "LIMIT", "PAUSED", "QUEUED", "READY", "RUNNING", "OLDEST"]
    qrows = {ln.split()[0]: ln.split() for ln in qlines[1:]}
    assert qrows["default"] == ["default", "-", "no", "1", "0", "0", "-"]
    assert qrows["stuck"][:6] == ["stuck", "4", "yes", "2", "2", "0"]
    assert qrows["stuck"][6].endswith("s")
    listed = {q["name"]: q for q in json.loads(cli("queues", "--json").stdout)}
    assert set(listed["stuck"]) == {
        "name",
        "concurrency_limit",
        "paused",
        "paused_at",
        "queued",
        "running",
        "ready",
        "oldest_ready_seconds",
    }
    assert (listed["stuck"]["ready"], listed["payments"]["running"]) == (2, 1)
    assert listed["stuck"]["oldest_ready_seconds"] >= oldest
    assert listed["default"]["oldest_ready_seconds"] is None
    assert {t.refresh().status for t in stuck} == {"queued"}


def _watch(
    database_url: str, schema: str, *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env["HYREX_LIKE_DATABASE_URL"] = database_url
    env["HYREX_LIKE_SCHEMA"] = schema
    return subprocess.Popen(
        [sys.executable, "-m", "hyrex_like", "status", "--watch", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(APPS),
    )


def _lines(stream: IO[bytes]) -> queue.Queue[bytes]:
    """The lines of ``stream`` as a thread reads them (so a test can wait with a deadline)."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in iter(stream.readline, b""):
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_status_watch_prints_a_json_line_per_tick_until_a_signal(
    sig: int, bapp: Any, database_url: str, schema: str
) -> None:
    bapp.echo.send({"n": 1})
    proc = _watch(database_url, schema, "0.2", "--json")
    try:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        ticks = [json.loads(lines.get(timeout=30)) for _ in range(2)]
        for tick in ticks:
            [default] = tick["queues"]
            assert (default["queue"], default["ready"], tick["workers_alive"]) == ("default", 1, 0)
        assert ticks[0]["at"] < ticks[1]["at"]
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and "\x1b" not in stderr, stderr


def test_status_watch_clears_a_terminal_only(bapp: Any, database_url: str, schema: str) -> None:
    bapp.echo.send({"n": 1})
    piped = _watch(database_url, schema, "0.2")
    try:
        assert piped.stdout is not None
        lines = _lines(piped.stdout)
        seen = [lines.get(timeout=30) for _ in range(8)]  # two ticks: 4 lines each
        assert not any(b"\x1b" in ln for ln in seen)
        assert sum(ln.startswith(b"QUEUE") for ln in seen) == 2
        piped.terminate()
        assert piped.wait(30) == 0
    finally:
        piped.kill()
    leader, follower = pty.openpty()
    tty = _watch(database_url, schema, "0.2", stdout=follower)
    os.close(follower)
    try:
        got = b""
        deadline = time.monotonic() + 30
        while got.count(b"\x1b[H\x1b[2J") < 2:
            assert time.monotonic() < deadline, got
            got += os.read(leader, 4096)
        assert b"QUEUE" in got and b"workers alive: 0" in got
        tty.terminate()
        assert tty.wait(30) == 0
    finally:
        tty.kill()
        os.close(leader)
