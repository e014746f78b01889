"""Fixtures: a real PostgreSQL (the configured URL, else the embedded one), a fresh schema per
test, registries bound to it and real worker processes that are always cleaned up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hyrex_like import HyrexRegistry
from hyrex_like.embedded import embedded_database_url

from .helpers import ROOT, TcpProxy, Worker, start_worker


@pytest.fixture(scope="session")
def database_url() -> str:
    """``HYREX_LIKE_DATABASE_URL`` if set, else the embedded PostgreSQL (as the library does)."""
    url = os.environ.get("HYREX_LIKE_DATABASE_URL")
    if url:
        return url
    return embedded_database_url(ROOT / ".hyrex_like" / "test-pgdata")


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A unique, empty PostgreSQL schema for one test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:16]
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def registry(database_url: str, schema: str) -> Iterator[HyrexRegistry]:
    hy = HyrexRegistry(database_url, schema=schema)
    yield hy
    hy.close()


@pytest.fixture
def app_registry(database_url: str, schema: str) -> Callable[[HyrexRegistry], HyrexRegistry]:
    """Point an app module's registry (from tests/apps) at this test's schema."""
    used: list[HyrexRegistry] = []

    def bind(hy: HyrexRegistry) -> HyrexRegistry:
        hy.configure(database_url=database_url, schema_name=schema)
        used.append(hy)
        return hy

    yield bind  # type: ignore[misc]
    for hy in used:
        hy.close()


@pytest.fixture
def worker(database_url: str, schema: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start real worker processes; any still running at the end are killed."""
    started: list[Worker] = []

    def start(app: str, *args: str, env: dict[str, str] | None = None) -> Worker:
        log_path = tmp_path / f"worker-{len(started)}.log"
        w = start_worker(app, database_url, schema, log_path, *args, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A directory the tasks of tests/apps/worker_app.py write their events to."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def app_worker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    """Start `run-worker worker_app:hy ARGS` with its task events going to ``out_dir``."""

    def start(*args: str, app: str = "worker_app:hy", env: dict[str, str] | None = None) -> Worker:
        return worker(app, *args, env={"HYREX_TEST_OUT": str(out_dir), **(env or {})})

    return start


@pytest.fixture
def wapp(app_registry: Callable[[HyrexRegistry], HyrexRegistry]):  # type: ignore[no-untyped-def]
    """tests/apps/worker_app.py, its registry bound to this test's schema (for sending)."""
    from .apps import worker_app

    app_registry(worker_app.hy)
    return worker_app


@pytest.fixture
def db_proxy(database_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy to the test database that a test can take down and bring back."""
    from .helpers import TcpProxy

    proxy = TcpProxy(database_url)
    yield proxy
    proxy.down()
