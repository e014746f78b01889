"""The embedded default: with no database URL, a private PostgreSQL from a wheel, in
``<cwd>/.hyrex_like/``, shared by every process using that directory; forbidden by an env var.

Each test runs real Python processes with ``HYREX_LIKE_DATABASE_URL`` unset, in a fresh
working directory, so each starts (or joins) a real server there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from hyrex_like import ConfigurationError, HyrexRegistry

from .helpers import embedded_env

pytestmark = pytest.mark.embedded

SEND = """
import sys
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()

@hy.task
def echo(n: int) -> int:
    return n

handle = echo.send(int(sys.argv[1])).refresh()
print("ROW", handle.status, handle.row.args, flush=True)
"""

# A process of the sharing test: start (or join) the server, send, report which server and how
# many tasks it sees, then hold on until told to go on (a file appears), send again and exit.
HOLDER = """
import pathlib, sys, time
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()

@hy.task
def echo(n: int) -> int:
    return n

def report(prefix):
    echo.send(0)
    with hy.store.pool().connection() as conn:
        t = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        n = conn.execute("SELECT count(*) FROM task").fetchone()[0]
    print(prefix, t.isoformat(), n, flush=True)

report("READY")
release = pathlib.Path(sys.argv[1])
while not release.exists():
    time.sleep(0.01)
report("AFTER")
hy.close()
"""


def read_line_starting(stream: IO[str], prefix: str) -> str:
    """The first line from a child's output starting with ``prefix`` (blocks until it comes)."""
    for line in stream:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the process exited without printing {prefix}")


def run(code: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=embedded_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_send_without_url_starts_embedded_server_under_cwd(workdir):
    proc = run(SEND, workdir, "7")
    assert proc.returncode == 0, proc.stderr
    assert "ROW queued 7" in proc.stdout
    data = workdir / ".hyrex_like" / "pgdata"
    assert (data / "PG_VERSION").is_file()


def test_embedded_start_logs_one_warning_saying_where_the_data_lives(workdir):
    proc = run(SEND, workdir, "1")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "embedded_database_" in ln]
    assert len(lines) == 1, lines
    assert "embedded_database_started" in lines[0]
    # on stderr through logging's last resort, which shows warnings and worse only
    assert lines[0] in proc.stderr.splitlines() and lines[0] not in proc.stdout
    assert f"data_dir={workdir / '.hyrex_like' / 'pgdata'}" in lines[0]
    assert "HYREX_LIKE_DATABASE_URL" in lines[0] and "HYREX_LIKE_DATA_DIR" in lines[0]


URL_AND_LISTEN = """
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()
url = hy.store.url()
with hy.store.pool().connection() as c:
    listen = c.execute("SHOW listen_addresses").fetchone()[0]
    sockets = c.execute("SHOW unix_socket_directories").fetchone()[0]
print("URL", url, flush=True)
print("LISTEN", repr(listen), repr(sockets), flush=True)
"""


def test_embedded_url_names_a_private_tcp_port_on_localhost(workdir):
    from psycopg import conninfo

    proc = run(URL_AND_LISTEN, workdir)
    assert proc.returncode == 0, proc.stderr
    url = next(ln for ln in proc.stdout.splitlines() if ln.startswith("URL ")).split()[1]
    params = conninfo.conninfo_to_dict(url)
    assert params["host"] == "127.0.0.1"
    assert int(params["port"]) not in (0, 5432)
    assert "LISTEN '127.0.0.1' ''" in proc.stdout  # no other address, no socket


IMPORTED = """
import sys
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()

@hy.task
def echo(n: int) -> int:
    return n

echo.send(1)
print("MODULES", sorted(m for m in ("pgserver", "platformdirs") if m in sys.modules))
"""


def test_embedded_start_imports_no_platformdirs_and_warns_of_no_runtime_dir(workdir):
    # pgserver's own manager reads the runtime directory through platformdirs when imported,
    # which warns (RuntimeDirWarning) where XDG_RUNTIME_DIR is unset, as in containers and CI.
    env = embedded_env()
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", IMPORTED],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MODULES []" in proc.stdout
    assert "Warning" not in proc.stderr and "XDG_RUNTIME_DIR" not in proc.stdout + proc.stderr


def test_embedded_data_survives_the_process(workdir):
    assert run(SEND, workdir, "1").returncode == 0
    count = (
        "with hy.store.pool().connection() as c:\n"
        "    print('TASKS', c.execute('SELECT count(*) FROM task').fetchone()[0])\n"
    )
    second = run(SEND + count, workdir, "2")
    assert second.returncode == 0, second.stderr
    assert "ROW queued 2" in second.stdout
    assert "TASKS 2" in second.stdout
    assert "schema_migrated" not in second.stdout  # the first run's schema is reused


def test_two_processes_with_the_same_dir_share_one_server(workdir):
    procs: list[subprocess.Popen[str]] = []

    def hold(release: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(release)],
            cwd=workdir,
            env=embedded_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    try:
        first = hold(workdir / "release-first")
        assert first.stdout is not None
        _, started, tasks = read_line_starting(first.stdout, "READY").split()
        assert tasks == "1"
        second = hold(workdir / "release-second")
        assert second.stdout is not None
        # The same server instance (same start time) and the same data (the first one's task).
        assert read_line_starting(second.stdout, "READY").split() == ["READY", started, "2"]

        # The server outlives the process that started it while another one still uses it.
        (workdir / "release-first").touch()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        (workdir / "release-second").touch()
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert f"AFTER {started} 4" in out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    # The last process to leave stopped it.
    assert not (workdir / ".hyrex_like" / "pgdata" / "postmaster.pid").exists()


def test_no_embedded_variable_gives_configuration_error_naming_the_url_variable(
    workdir, monkeypatch
):
    monkeypatch.delenv("HYREX_LIKE_DATABASE_URL", raising=False)
    monkeypatch.setenv("HYREX_LIKE_NO_EMBEDDED", "1")
    monkeypatch.chdir(workdir)
    hy = HyrexRegistry()

    @hy.task
    def echo(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="HYREX_LIKE_DATABASE_URL"):
        echo.send(1)
    assert not (workdir / ".hyrex_like").exists()


def test_no_embedded_variable_in_a_fresh_process_fails_without_starting_a_server(workdir):
    proc = run(SEND, workdir, "1", HYREX_LIKE_NO_EMBEDDED="1")
    assert proc.returncode != 0
    assert "ConfigurationError" in proc.stderr
    assert "HYREX_LIKE_DATABASE_URL" in proc.stderr
    assert not (workdir / ".hyrex_like").exists()
