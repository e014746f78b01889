"""The embedded run's guard (``_local_server_watch`` in conftest) can fail: it finds a test
schema left on a server, and an embedded pytest run that writes to 127.0.0.1:5432 fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .helpers import LOCAL_SERVER, ROOT, embedded_env, schemas_on_server, server_address

PROBE = "HYREX_TEST_LEAK_PROBE"


def test_the_check_finds_a_test_schema_on_the_server(database_url, schema):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        database = conn.info.dbname
    assert schemas_on_server(database_url, {schema, "t_not_made_by_anyone"}) == [(database, schema)]


@pytest.mark.skipif(not os.environ.get(PROBE), reason="only run by the test below")
def test_leak_probe_writes_its_schema_to_the_local_server(schema):
    """Run only inside the embedded pytest started below: does what the guard must catch."""
    with psycopg.connect(LOCAL_SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    print("PROBE_SCHEMA", schema)


def test_an_embedded_run_that_writes_to_the_local_server_fails(database_url):
    # Only where the local server is the one this run was given: the probe writes to it.
    try:
        given = server_address(database_url)
    except ValueError:
        given = None
    if given != ("127.0.0.1", 5432):
        pytest.skip("this run was not given the local PostgreSQL at 127.0.0.1:5432")
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
            f"{__file__}::test_leak_probe_writes_its_schema_to_the_local_server",
        ],
        cwd=ROOT,
        env=embedded_env(**{PROBE: "1"}),
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    probe = [ln.split()[1] for ln in out.splitlines() if ln.startswith("PROBE_SCHEMA")]
    assert probe, out
    schema = probe[0]
    try:
        assert proc.returncode == 1, out
        assert "1 passed, 1 error" in out, out
        assert "wrote to the local PostgreSQL at 127.0.0.1:5432" in out, out
        assert f"{schema} (made for tests/test_local_server_guard.py::" in out, out
    finally:
        found = schemas_on_server(LOCAL_SERVER, {schema})
        for database, name in found:
            local = make_conninfo(LOCAL_SERVER, dbname=database)
            with psycopg.connect(local, autocommit=True) as c:
                c.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    assert found, "the probe did not write where the guard looks"


def test_without_a_local_server_the_check_is_skipped_and_says_so():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    nowhere = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=3"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"{__file__}::test_the_check_finds_a_test_schema_on_the_server",
        ],
        cwd=ROOT,
        env=embedded_env(HYREX_TEST_LOCAL_SERVER=nowhere),
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed" in out, out
    assert "no PostgreSQL answers at 127.0.0.1:5432: nothing to check there" in out, out
