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
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
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
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(APPS), str(ROOT), full_env.get("PYTHONPATH", "")]
    )
    full_env["HYREX_LIKE_DATABASE_URL"] = database_url
    full_env["HYREX_LIKE_SCHEMA"] = schema
    if env:
        full_env.update(env)
    cmd = [sys.executable, "-m", "hyrex_like", "run-worker", app, *args]
    log_file = open(log_path, "a")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, text=True,
        cwd=str(APPS), start_new_session=True,
    )
    log_file.close()
    return Worker(proc, log_path)


def query(database_url: str, schema: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one read statement in the test schema (test-side inspection only)."""
    with psycopg.connect(database_url, autocommit=True,
                         options=f"-c search_path={schema}") as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def count(database_url: str, schema: str, where: str = "true", table: str = "task") -> int:
    rows = query(database_url, schema, f"SELECT count(*) FROM {table} WHERE {where}")
    return int(rows[0][0])
