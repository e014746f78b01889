"""Promises of issue #11 that no other test could fail on: the README's app sends nothing when
imported (the worker imports it), and the tests' own address check never lets a URL without a
host or port stand for a server it was not given (libpq's default host and port)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from .helpers import server_address
from .test_readme import readme_blocks


def test_importing_the_readme_app_sends_nothing(database_url: str, schema: str, tmp_path: Path):
    [app] = [body for kind, name, body in readme_blocks() if (kind, name) == ("file", "app.py")]
    (tmp_path / "app.py").write_text(app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYREX_LIKE_")}
    env.update(HYREX_LIKE_DATABASE_URL=database_url, HYREX_LIKE_SCHEMA=schema)
    env.pop("PYTHONPATH", None)
    code = "import app\napp.hy.close()\nprint('IMPORTED', sorted(app.hy.tasks))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED ['process_file']" in proc.stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'task'",
            (schema,),
        ).fetchone()
        sent = 0
        if tables == (1,):
            task = sql.Identifier(schema, "task")
            sent = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(task)).fetchone()[0]
    assert sent == 0, "importing the README's app.py sent a task"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///test",  # no host: libpq's local socket
        "postgresql://postgres@127.0.0.1/test",  # no port: libpq's default one
        "postgresql://postgres@:6543/test",
        "host=/var/run/postgresql port=5433 dbname=test",  # a socket directory, not TCP
        "dbname=test",
    ],
)
def test_a_url_without_a_tcp_host_and_port_is_refused_by_the_tests_address_check(url):
    with pytest.raises(ValueError, match="naming a TCP host and port"):
        server_address(url)


def test_a_url_naming_host_and_port_gives_exactly_them():
    assert server_address("postgresql://u@db.example:6543/x") == ("db.example", 6543)
    assert server_address("host=127.0.0.1 port=40001 dbname=x") == ("127.0.0.1", 40001)
