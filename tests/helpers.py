"""Test helpers: wait on conditions with deadlines, run real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last value {last!r}"
            )
        time.sleep(interval)


class Worker:
    """A real `hyrex-like run-worker` process."""

    def __init__(self, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for exit; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def executor_pids(self) -> list[int]:
        """PIDs of this worker's executor processes (its direct children)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []
        out = []
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except FileNotFoundError:
                continue
            if comm == "hyrex-executor":  # the name every executor gives itself
                out.append(pid)
        return out


def start_worker(
    app: str,
    database_url: str,
    schema: str,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Worker:
    """Start ``hyrex-like run-worker app`` against ``schema``; logs go to ``log_path``."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["HYREX_LIKE_DATABASE_URL"] = database_url
    full_env["HYREX_LIKE_SCHEMA"] = schema
    if env:
        full_env.update(env)
    cmd = [sys.executable, "-m", "hyrex_like", "run-worker", app, *args]
    log_file = open(log_path, "a")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=full_env,
        text=True,
        cwd=str(APPS),
        start_new_session=True,
    )
    log_file.close()
    return Worker(proc, log_path)


def query(database_url: str, schema: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one read statement in the test schema (test-side inspection only)."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def count(database_url: str, schema: str, where: str = "true", table: str = "task") -> int:
    rows = query(database_url, schema, f"SELECT count(*) FROM {table} WHERE {where}")
    return int(rows[0][0])


# ---------------------------------------------------------------- worker-test helpers


def read_events(out_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The JSON lines written by tests/apps/worker_app.py's ``note`` (optionally one kind)."""
    import json

    path = out_dir / "events.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if kind is None or e["kind"] == kind]


def json_log(worker: Worker) -> list[dict[str, Any]]:
    """A ``--log-format json`` worker's log, one object per line (fails on any other line)."""
    import json

    out = []
    for line in worker.log().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"log line is not a JSON object: {line!r}") from None
    return out


def run_cli(
    *args: str,
    database_url: str,
    schema: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hyrex_like ARGS`` to completion (for commands that exit by themselves)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["HYREX_LIKE_DATABASE_URL"] = database_url
    full_env["HYREX_LIKE_SCHEMA"] = schema
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "hyrex_like", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(APPS),
        timeout=timeout,
    )


def worker_ids(database_url: str, schema: str) -> list[Any]:
    """Ids of the worker rows in ``schema``, oldest first."""
    return [r[0] for r in query(database_url, schema, "SELECT id FROM worker ORDER BY started_at")]


def backend_pids_of(database_url: str, pid: int) -> list[int]:
    """PostgreSQL backend pids serving the TCP connections that process ``pid`` holds open.

    Matches the process's local TCP ports (from /proc) with ``pg_stat_activity.client_port``,
    so a test can terminate exactly one worker's connections and nobody else's.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    if not ports:
        return []
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) "
            "AND pid <> pg_backend_pid()",
            (sorted(ports),),
        ).fetchall()
    return [int(r[0]) for r in rows]


def terminate_backends(database_url: str, pids: list[int]) -> int:
    """``pg_terminate_backend`` each pid; returns how many were terminated."""
    if not pids:
        return 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
            "FROM unnest(%s::int[]) AS pid",
            (pids,),
        ).fetchall()
    return int(rows[0][0])


class TcpProxy:
    """A TCP forwarder in front of PostgreSQL, to simulate an outage without touching the server.

    ``down()`` drops every open connection and refuses new ones (like a stopped server);
    ``up()`` accepts again. ``url`` is the database URL with host and port pointed at the proxy.
    """

    def __init__(self, database_url: str) -> None:
        import socket
        import threading
        import urllib.parse

        parts = urllib.parse.urlsplit(database_url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"TcpProxy needs a postgresql:// URL, not {database_url!r}")
        self._target = server_address(database_url)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        auth = f"{parts.username}@" if parts.username else ""
        if parts.password:
            auth = f"{parts.username}:{parts.password}@"
        self.url = urllib.parse.urlunsplit(
            (parts.scheme, f"{auth}127.0.0.1:{self.port}", parts.path, parts.query, "")
        )
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._listener: Any = None
        self._socket = socket
        self._threading = threading

    def up(self) -> None:
        sock = self._socket.socket()
        sock.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        self._threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # close() alone does not wake the thread blocked in accept()
                listener.shutdown(self._socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(self._socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: Any) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = self._socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def embedded_env(**extra: str) -> dict[str, str]:
    """The environment for a process that uses the embedded default (no HYREX_LIKE_* set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYREX_LIKE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def server_address(database_url: str) -> tuple[str, int]:
    """The TCP host and port the URL names, both required.

    libpq reads a missing host or port as its defaults (a local socket, 5432): a test must reach
    the server it was given, never whatever else listens there.
    """
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(database_url)
    host, port = params.get("host"), params.get("port")
    if not host or not port or str(host).startswith("/"):
        raise ValueError(
            f"this test needs a database URL naming a TCP host and port, got {database_url!r}"
        )
    return str(host), int(port)


LOCAL_SERVER = os.environ.get(
    "HYREX_TEST_LOCAL_SERVER",
    "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3",
)
"""The machine's own PostgreSQL, which an embedded test run must never write to (another
address only for the test of the check itself)."""


def schemas_on_server(conninfo: str, names: set[str]) -> list[tuple[str, str]]:
    """``(database, schema)`` for each schema in ``names`` found in any database of a server."""
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(conninfo, autocommit=True) as conn:
        databases = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"
            ).fetchall()
        ]
    found = []
    for database in databases:
        try:
            with psycopg.connect(make_conninfo(conninfo, dbname=database), autocommit=True) as c:
                rows = c.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1",
                    (sorted(names),),
                ).fetchall()
        except psycopg.OperationalError:
            continue  # dropped meanwhile, or not ours to open
        found += [(database, r[0]) for r in rows]
    return found


def done(handle: Any, timeout: float = 30.0) -> Any:
    """Refresh a TaskHandle until it is completed, failed or canceled (polling every 20 ms)."""
    wait_until(lambda: handle.refresh().done, timeout, what=f"task {handle.id} to finish")
    return handle
