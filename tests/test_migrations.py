"""The schema: automatic migration, `init-db`, idempotence, concurrent migrators, constraints,
indexes and version checks, on a real PostgreSQL schema per test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest
from psycopg import sql

from hyrex_like import ConfigurationError, HyrexRegistry, SchemaNotReady, Settings
from hyrex_like.db import SCHEMA_VERSION_LOCK, latest_version, migrations, q

from .helpers import ROOT, query, wait_until

ALL = list(range(1, latest_version() + 1))  # every migration, in order


def tables(database_url: str, schema: str) -> set[str]:
    rows = query(
        database_url,
        schema,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        [schema],
    )
    return {r[0] for r in rows}


def migration_rows(database_url: str, schema: str) -> list[tuple[int, int]]:
    return [
        (int(v), int(n))
        for v, n in query(
            database_url,
            schema,
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version",
        )
    ]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def init_db(database_url: str, schema: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hyrex_like",
            "init-db",
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=ROOT,
    )


def test_first_send_creates_the_schema(registry, database_url, schema):
    @registry.task
    def echo(n: int) -> None:
        pass

    assert tables(database_url, schema) == set()
    echo.send(1)
    assert {"task", "task_run", "worker", "schema_migrations"} <= tables(database_url, schema)
    assert migration_rows(database_url, schema) == [(v, 1) for v in range(1, latest_version() + 1)]


def test_registry_creation_does_not_connect(database_url, schema):
    hy = HyrexRegistry(database_url, schema=schema)

    @hy.task
    def echo(n: int) -> None:
        pass

    assert tables(database_url, schema) == set()


def test_init_db_cli_creates_the_schema(database_url, schema):
    proc = init_db(database_url, schema)
    assert proc.returncode == 0, proc.stderr
    assert f"applied migrations {ALL}" in proc.stdout
    assert {"task", "task_run", "worker"} <= tables(database_url, schema)


def test_init_db_cli_is_idempotent(database_url, schema):
    assert init_db(database_url, schema).returncode == 0
    again = init_db(database_url, schema)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert migration_rows(database_url, schema) == [(v, 1) for v in ALL]


def test_init_db_cli_never_prints_the_password(database_url, schema):
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info["password"] = "s3cret-pw"
    url = psycopg.conninfo.make_conninfo(**info)  # trust auth ignores the password
    proc = init_db(url, schema)
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "***" in proc.stdout


def test_init_db_cli_bad_schema_name_fails_with_usage_error(database_url):
    proc = init_db(database_url, "Bad-Name")
    assert proc.returncode == 2
    assert "schema name 'Bad-Name'" in proc.stderr


def test_migrate_twice_in_process_applies_nothing_the_second_time(registry, database_url, schema):
    assert registry.migrate() == ALL
    assert registry.migrate() == []
    assert migration_rows(database_url, schema) == [(v, 1) for v in ALL]


def test_concurrent_migrators_apply_each_version_once(database_url, schema):
    # Six processes started together, each waiting on a barrier file so they migrate at once.
    code = (
        "import sys, time, pathlib\n"
        "from hyrex_like import HyrexRegistry\n"
        "go = pathlib.Path(sys.argv[3])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "hy = HyrexRegistry(sys.argv[1], schema=sys.argv[2])\n"
        "print(hy.migrate())\n"
    )
    go = ROOT / ".pytest_cache" / f"go-{schema}"
    go.parent.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url, schema, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for _ in range(6)
    ]
    try:
        go.touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        go.unlink(missing_ok=True)
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 6, [o[1] for o in outs]
    assert sorted(o[0].strip().splitlines()[-1] for o in outs) == [str(ALL)] + ["[]"] * 5
    assert migration_rows(database_url, schema) == [(v, 1) for v in ALL]


def test_task_status_is_checked_by_the_database(registry, database_url, schema):
    registry.migrate()
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO task (id, task_name, queue, args) "
            "VALUES (gen_random_uuid(), 't', 'default', '{}')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE task SET status = 'bogus'")


def test_task_run_status_is_checked_by_the_database(registry, database_url, schema):
    registry.migrate()
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO task (id, task_name, queue, args) "
            "VALUES ('00000000-0000-0000-0000-000000000001', 't', 'default', '{}')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO task_run (task_id, attempt_number, status) "
                "VALUES ('00000000-0000-0000-0000-000000000001', 1, 'bogus')"
            )


def test_task_priority_is_checked_by_the_database(registry, database_url, schema):
    registry.migrate()
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO task (id, task_name, queue, args, priority) "
                "VALUES (gen_random_uuid(), 't', 'default', '{}', 11)"
            )


def test_claim_index_is_partial_over_queued_rows(registry, database_url, schema):
    registry.migrate()
    rows = query(
        database_url,
        schema,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'task_claim_idx'",
        [schema],
    )
    assert len(rows) == 1
    indexdef = rows[0][0]
    assert "(priority DESC, run_after, id)" in indexdef
    assert "WHERE ((status)::text = 'queued'::text)" in indexdef  # status is a domain over text


def test_schema_newer_than_library_is_refused(registry, database_url, schema):
    registry.migrate()
    query(
        database_url,
        schema,
        "INSERT INTO schema_migrations (version, name) VALUES (%s, 'future')",
        [latest_version() + 1],
    )
    hy = HyrexRegistry(database_url, schema=schema)

    @hy.task
    def echo(n: int) -> None:
        pass

    try:
        with pytest.raises(SchemaNotReady, match="newer than this library"):
            echo.send(1)
        with pytest.raises(SchemaNotReady, match="newer than this library"):
            hy.migrate()
    finally:
        hy.close()
    assert query(database_url, schema, "SELECT count(*) FROM task") == [(0,)]


def test_without_auto_migrate_an_empty_schema_is_refused(database_url, schema):
    settings = Settings(database_url=database_url, schema_name=schema, auto_migrate=False)
    hy = HyrexRegistry(settings=settings)

    @hy.task
    def echo(n: int) -> None:
        pass

    try:
        with pytest.raises(SchemaNotReady, match="hyrex-like init-db"):
            echo.send(1)
    finally:
        hy.close()
    assert tables(database_url, schema) == set()


def test_without_auto_migrate_an_initialised_schema_is_used(database_url, schema):
    assert init_db(database_url, schema).returncode == 0
    settings = Settings(database_url=database_url, schema_name=schema, auto_migrate=False)
    hy = HyrexRegistry(settings=settings)

    @hy.task
    def echo(n: int) -> None:
        pass

    try:
        assert echo.send(1).refresh().status == "queued"
    finally:
        hy.close()


def test_auto_migrate_can_be_disabled_from_the_environment(database_url, schema):
    settings = Settings.from_env(
        {
            "HYREX_LIKE_AUTO_MIGRATE": "false",
            "HYREX_LIKE_DATABASE_URL": database_url,
            "HYREX_LIKE_SCHEMA": schema,
        }
    )
    assert settings.auto_migrate is False


def test_current_schema_is_used_without_taking_the_migration_lock(database_url, schema):
    assert init_db(database_url, schema).returncode == 0
    hy = HyrexRegistry(database_url, schema=schema)

    @hy.task
    def echo(n: int) -> None:
        pass

    sent: list[object] = []
    with psycopg.connect(database_url, autocommit=True) as holder:
        # Another process is mid-migration (of any schema): a current schema must not wait.
        holder.execute("SELECT pg_advisory_lock(%s)", [SCHEMA_VERSION_LOCK])
        thread = threading.Thread(target=lambda: sent.append(echo.send(1)), daemon=True)
        thread.start()
        wait_until(lambda: sent, 15, what="a send while the migration lock is held")
    hy.close()


def test_malformed_url_is_a_configuration_error(schema):
    hy = HyrexRegistry("host=db password=hunter 2", schema=schema)

    @hy.task
    def echo(n: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="invalid database URL") as info:
        echo.send(1)
    assert "hunter" not in str(info.value)


def _schema_at(database_url: str, schema: str, version: int) -> psycopg.Connection:
    """A connection (autocommit, search_path set) to ``schema`` created at ``version``, as an
    older release of the library left it."""
    c = psycopg.connect(database_url, autocommit=True)
    c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    c.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    c.execute(q("create_migrations_table"))
    for mig in migrations()[:version]:
        assert mig.version <= version
        c.execute(mig.text)
        c.execute(q("record_migration"), {"version": mig.version, "name": mig.name})
    return c


def test_upgrade_from_version_1_keeps_tasks_and_runs(database_url, schema):
    """A schema created by 0.1 (version 1) with work in it upgrades in place: run rows keep
    their attempts, and are then keyed by (task_id, attempt_number)."""
    with _schema_at(database_url, schema, 1) as c:
        c.execute(
            "INSERT INTO task (id, task_name, queue, args, status, attempt_count)"
            " VALUES ('00000000-0000-7000-8000-000000000001', 'old', 'default', '{}', 'failed', 2)"
        )
        c.execute(
            "INSERT INTO task_run (task_id, attempt_number, status) VALUES"
            " ('00000000-0000-7000-8000-000000000001', 1, 'failed'),"
            " ('00000000-0000-7000-8000-000000000001', 2, 'failed')"
        )
    registry = HyrexRegistry(database_url, schema=schema)
    try:
        assert registry.migrate() == ALL[1:]
        _, runs = registry.store.get_task(uuid.UUID("00000000-0000-7000-8000-000000000001"))
    finally:
        registry.close()
    assert [r.attempt_number for r in runs] == [1, 2]
    key = query(
        database_url,
        schema,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'task_run'::regclass AND contype = 'p'",
    )
    assert key == [("PRIMARY KEY (task_id, attempt_number)",)]


def test_upgrade_from_version_2_moves_the_task_checks_to_domains_in_place(database_url, schema):
    """Version 3 swaps the task table's CHECKs for domains and drops the insert trigger without
    rewriting the table; every rule the CHECKs made still holds."""
    with _schema_at(database_url, schema, 2) as c:
        c.execute(
            "INSERT INTO task (id, task_name, queue, args, priority, status, max_retries,"
            " timeout_seconds, attempt_count, failure_count) VALUES"
            " ('00000000-0000-7000-8000-000000000002', 'old', 'q', '{}', 10, 'failed', 3, 1.5,"
            " 2, 2)"
        )
        [(filenode,)] = c.execute("SELECT pg_relation_filenode('task')").fetchall()
    registry = HyrexRegistry(database_url, schema=schema)
    try:
        assert registry.migrate() == [3, 4, 5, 6, 7, 8, 9, 10, 11]
        row, _ = registry.store.get_task(uuid.UUID("00000000-0000-7000-8000-000000000002"))
    finally:
        registry.close()
    assert row is not None
    assert (row.task_name, row.queue, row.priority, row.status, row.max_retries) == (
        "old",
        "q",
        10,
        "failed",
        3,
    )
    assert (row.timeout_seconds, row.attempt_count, row.failure_count) == (1.5, 2, 2)
    assert query(database_url, schema, "SELECT pg_relation_filenode('task')") == [(filenode,)]
    assert (
        query(
            database_url,
            schema,
            "SELECT conname FROM pg_constraint WHERE conrelid = 'task'::regclass AND contype = 'c'",
        )
        == []
    )
    assert (
        query(
            database_url, schema, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'task'::regclass"
        )
        # the insert trigger is gone; version 7's workflow hand-off fires on status updates
        == [("task_workflow_advance",)]
    )
    bad_inserts = {
        "empty task name": "task_name => ''",
        "long task name": "task_name => repeat('x', 256)",
        "empty queue": "queue => ''",
        "priority 0": "priority => 0",
        "priority 11": "priority => 11",
        "unknown status": "status => 'bogus'",
        "negative max_retries": "max_retries => -1",
        "zero timeout": "timeout_seconds => 0",
        "negative attempt_count": "attempt_count => -1",
        "negative failure_count": "failure_count => -1",
    }
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        for what, assignment in bad_inserts.items():
            column, value = assignment.split(" => ")
            values = {"task_name": "'t'", "queue": "'q'", column: value}
            stmt = (
                f"INSERT INTO task (id, args, {', '.join(values)}) "
                f"VALUES (gen_random_uuid(), '{{}}', {', '.join(values.values())})"
            )
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                conn.execute(stmt)  # type: ignore[arg-type]
                pytest.fail(f"{what} was accepted")
        # an UPDATE is checked too, on the columns it sets
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute("UPDATE task SET attempt_count = attempt_count - 3")


def test_upgrade_from_version_3_keeps_run_times_and_adds_claimed_at_in_place(database_url, schema):
    """Version 4 adds claimed_at and lets started_at be NULL (a run whose body has not begun)
    without rewriting task_run: old runs keep their started_at and have no claimed_at, and a
    run opened afterwards gets its claim time and no start."""
    task = "00000000-0000-7000-8000-000000000004"
    with _schema_at(database_url, schema, 3) as c:
        c.execute(
            "INSERT INTO task_run (task_id, attempt_number, status, started_at)"
            " VALUES (%s, 1, 'failed', '2026-01-02 03:04:05+00')",
            (task,),
        )
        [(filenode,)] = c.execute("SELECT pg_relation_filenode('task_run')").fetchall()
    registry = HyrexRegistry(database_url, schema=schema)
    try:
        assert registry.migrate() == [4, 5, 6, 7, 8, 9, 10, 11]
    finally:
        registry.close()
    assert query(database_url, schema, "SELECT pg_relation_filenode('task_run')") == [(filenode,)]
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        c.execute(
            "INSERT INTO task_run (task_id, attempt_number, status) VALUES (%s, 2, 'running')",
            (task,),
        )
        rows = c.execute(
            "SELECT attempt_number, started_at IS NOT NULL, claimed_at IS NOT NULL"
            " FROM task_run WHERE task_id = %s ORDER BY attempt_number",
            (task,),
        ).fetchall()
    assert rows == [(1, True, False), (2, False, True)]
