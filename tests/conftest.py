"""Fixtures: a real PostgreSQL (the configured URL, else the embedded one), a fresh schema per
test, registries bound to it and real worker processes that are always cleaned up.

On the embedded path (no ``HYREX_LIKE_DATABASE_URL``) the session also checks, when it ends,
that none of its schemas (and no new ``hyrex_like`` schema) turned up on the machine's own
PostgreSQL at 127.0.0.1:5432, a server that run was never given: see ``_local_server_watch``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hyrex_like import HyrexRegistry
from hyrex_like.embedded import embedded_database_url

from .helpers import LOCAL_SERVER, ROOT, TcpProxy, Worker, schemas_on_server, start_worker

EMBEDDED_RUN = not os.environ.get("HYREX_LIKE_DATABASE_URL")
TEST_DATA_DIR = ROOT / ".hyrex_like" / "test-pgdata"
"""The tests' embedded data, apart from the project's own ``.hyrex_like/pgdata``."""

_schemas_made: dict[str, str] = {}
"""Every schema name the ``schema`` fixture handed out this session, with its test."""


@pytest.fixture(scope="session")
def database_url() -> str:
    """``HYREX_LIKE_DATABASE_URL`` if set, else the embedded PostgreSQL (the library's own
    start-or-join, so it listens on a private TCP port and stops when the last user exits)."""
    url = os.environ.get("HYREX_LIKE_DATABASE_URL")
    if url:
        return url
    return embedded_database_url(TEST_DATA_DIR)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh working directory outside the project, removed afterwards with any embedded
    data made in it (~40 MB each). Readable by others: as root, the server runs as another
    user, which must reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix="hyrex-embedded-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def schema(database_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique, empty PostgreSQL schema for one test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:16]
    _schemas_made[name] = request.node.nodeid
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
def qapp(app_registry: Callable[[HyrexRegistry], HyrexRegistry]):  # type: ignore[no-untyped-def]
    """tests/apps/queue_app.py, its registry bound to this test's schema (for sending)."""
    from .apps import queue_app

    app_registry(queue_app.hy)
    return queue_app


@pytest.fixture
def db_proxy(database_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy to the test database that a test can take down and bring back."""
    from .helpers import TcpProxy

    proxy = TcpProxy(database_url)
    yield proxy
    proxy.down()


def _local_hyrex_schemas() -> set[tuple[str, str]] | None:
    """``hyrex_like`` schemas on the local server, or ``None`` if it cannot be asked."""
    try:
        return set(schemas_on_server(LOCAL_SERVER, {"hyrex_like"}))
    except psycopg.Error:
        return None


@pytest.fixture(scope="session", autouse=True)
def _local_server_watch() -> Iterator[None]:
    """On the embedded path, fail the session if its tests wrote to 127.0.0.1:5432.

    The test schemas have random names only this session uses, so finding one there is proof;
    a ``hyrex_like`` schema is flagged only if it appeared during the session (one may have
    been there before, made by someone else). No local server: nothing to check.
    """
    before = _local_hyrex_schemas() if EMBEDDED_RUN else None
    if EMBEDDED_RUN and before is None:
        _watch_report.append("no PostgreSQL answers at 127.0.0.1:5432: nothing to check there")
    yield
    if before is None:
        return
    leaked = [
        f"{db}.{name} (made for {_schemas_made[name]})"
        for db, name in schemas_on_server(LOCAL_SERVER, set(_schemas_made))
    ]
    after = _local_hyrex_schemas() or set()
    leaked += [f"{db}.{name} (appeared during the run)" for db, name in sorted(after - before)]
    if leaked:
        pytest.fail(
            "the embedded test run wrote to the local PostgreSQL at 127.0.0.1:5432, which it "
            "was never given; schemas found there: " + ", ".join(leaked),
            pytrace=False,
        )
    _watch_report.append(
        f"none of the {len(_schemas_made)} test schemas (and no new hyrex_like schema) is on "
        "the local PostgreSQL at 127.0.0.1:5432"
    )


_watch_report: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say what the embedded run's check of the local server found (or why it did not run)."""
    for line in _watch_report:
        terminalreporter.write_line(f"embedded run: {line}")
