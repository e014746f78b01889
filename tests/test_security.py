"""Security: parameterized SQL only, least-privilege roles, no DSN password in logs or errors."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from hyrex_like import DatabaseError, HyrexLikeError, HyrexRegistry

from .apps import basic_app
from .helpers import APPS, ROOT, query, start_worker, wait_until

PACKAGE = ROOT / "hyrex_like"
DOC = ROOT / "docs" / "security.md"

# ------------------------------------------------------------------- string-built SQL scan

_SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|TRUNCATE|GRANT|REVOKE|FROM|WHERE|"
    r"VALUES|LISTEN|NOTIFY|COPY|SET\s+\w+\s*=)\b"
)
_RUNNERS = {"execute", "executemany", "copy", "stream"}
_BUILDERS = {"format", "join", "replace", "format_map"}


def _literal_text(node: ast.AST) -> str | None:
    """The text of a string constant, or of the literal parts of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


def _is_sql_text(node: ast.AST) -> bool:
    text = _literal_text(node)
    return text is not None and bool(_SQL_WORDS.search(text))


def _is_composed_sql(node: ast.AST) -> bool:
    """``sql.SQL("...")`` or ``SQL("...")``: psycopg's safe composition."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name == "SQL"


def _is_built(node: ast.AST) -> bool:
    """An expression that builds a string at run time (rather than naming a fixed one)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _BUILDERS
    ):
        return not _is_composed_sql(node.func.value)
    return False


def find_string_built_sql(source: str, filename: str = "<string>") -> list[str]:
    """Places in ``source`` where SQL is built from strings. Empty means none found."""
    found: list[str] = []

    def flag(node: ast.AST, why: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {why}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.JoinedStr) and _is_sql_text(node):
            flag(node, "SQL keywords inside an f-string")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
            if _is_sql_text(node.left) or _is_sql_text(node.right):
                op = "%-formatting" if isinstance(node.op, ast.Mod) else "+ concatenation"
                flag(node, f"SQL text built with {op}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr in _BUILDERS and _is_sql_text(node.func.value):
                flag(node, f"SQL text built with .{attr}()")
            if attr in _RUNNERS and node.args and _is_built(node.args[0]):
                flag(node, f"string built at run time passed to .{attr}()")
            if _is_composed_sql(node) and node.args and _literal_text(node.args[0]) is None:
                if isinstance(node.args[0], ast.JoinedStr) or _is_built(node.args[0]):
                    flag(node, "sql.SQL() of a string built at run time")
    return found


PLANTED = """
def bad(conn, name, table, ids):
    conn.execute(f"SELECT * FROM task WHERE task_name = '{name}'")       # 1 f-string
    conn.execute("DELETE FROM task WHERE id = '%s'" % name)              # 2 %-format
    conn.execute("UPDATE task SET queue = '{}'".format(name))            # 3 .format
    conn.execute("SELECT * FROM " + table)                                # 4 concatenation
    stmt = f"DROP TABLE {table}"                                          # 5 f-string kept aside
    conn.execute(stmt)
    query = "INSERT INTO task VALUES (" + ", ".join(ids) + ")"           # 6 concatenation
    with conn.cursor().copy("COPY {} FROM STDIN".format(table)):         # 7 .format into copy
        pass
    conn.execute(sql.SQL(f"LISTEN {name}"))                               # 8 SQL() of f-string
    cur.execute(some_prefix + name)                                       # 9 built arg
"""

SAFE = """
def good(conn, name, schema):
    conn.execute(q("claim_tasks"), {"name": name})
    conn.execute("SELECT * FROM task WHERE task_name = %s", (name,))
    conn.execute("SELECT * FROM task WHERE task_name = %(name)s", {"name": name})
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier("hyrex_like_" + schema)))
    log.info(f"sent task {name} to queue")
    message = f"schema {schema!r} is missing: run `hyrex-like init-db`"
    channel = "hyrex_like_" + schema
"""


def test_sql_scanner_catches_every_planted_example():
    found = find_string_built_sql(PLANTED)
    lines = sorted({int(f.split(":")[1]) for f in found})
    # every planted line (3..14 minus the `with` body and the plain `execute(stmt)`) is caught
    assert lines == [3, 4, 5, 6, 7, 9, 10, 12, 13], "\n".join(found)


def test_sql_scanner_accepts_parameterized_and_composed_sql():
    assert find_string_built_sql(SAFE) == []


def test_library_builds_no_sql_from_strings():
    files = sorted(PACKAGE.rglob("*.py"))  # subpackages too (db/, worker/)
    assert len(files) >= 8
    found: list[str] = []
    runner_calls = 0
    for path in files:
        source = path.read_text("utf-8")
        found += find_string_built_sql(source, str(path.relative_to(PACKAGE)))
        runner_calls += sum(
            1
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in _RUNNERS
        )
    assert runner_calls >= 10  # the scan really looked at the statements
    assert found == [], "string-built SQL:\n" + "\n".join(found)


def test_named_queries_are_static_text():
    text = (PACKAGE / "queries.sql").read_text("utf-8")
    assert not re.search(r"\{\w*\}", text), "str.format placeholders in queries.sql"
    assert not re.search(r"%s", text), "positional placeholders: use %(name)s"


# ------------------------------------------------------------------- least privilege


def _sql_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", markdown, re.S)


def _statements(block: str) -> list[str]:
    return [s.strip() for s in block.split(";\n") if s.strip().rstrip(";")]


@pytest.fixture
def roles(database_url):
    """Unique owner/worker/app roles and a database owned by the owner; dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "hyrex_owner": f"lp_owner_{suffix}",
        "hyrex_worker": f"lp_worker_{suffix}",
        "hyrex_app": f"lp_app_{suffix}",
        "hyrex_viewer": f"lp_viewer_{suffix}",
        "hyrex_db": f"lp_db_{suffix}",
    }

    def rename(statement: str) -> str:
        for generic, unique in names.items():
            statement = re.sub(rf"\b{generic}\b", unique, statement)
        return statement

    def url(role: str) -> str:
        return conninfo.make_conninfo(
            database_url, user=names[role], dbname=names["hyrex_db"], password="change-me"
        )

    setup, grants = _sql_blocks(DOC.read_text("utf-8"))
    with psycopg.connect(database_url, autocommit=True) as admin:
        for statement in _statements(setup):
            admin.execute(rename(statement))  # type: ignore[arg-type]
    try:
        yield names, url, [rename(s) for s in _statements(grants)]
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{names["hyrex_db"]}" WITH (FORCE)')  # type: ignore[arg-type]
            for key in ("hyrex_owner", "hyrex_worker", "hyrex_app", "hyrex_viewer"):
                admin.execute(f'DROP ROLE IF EXISTS "{names[key]}"')  # type: ignore[arg-type]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.pop("HYREX_LIKE_DATABASE_URL", None)
    full_env.pop("HYREX_LIKE_SCHEMA", None)
    full_env["HYREX_LIKE_NO_EMBEDDED"] = "1"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hyrex_like", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(APPS),
        timeout=60,
    )


def test_worker_runs_under_least_privilege_roles(roles, tmp_path):
    names, url, grants = roles
    done = _cli("init-db", "--database-url", url("hyrex_owner"))
    assert done.returncode == 0, done.stderr
    with psycopg.connect(url("hyrex_owner"), autocommit=True) as owner:
        for statement in grants:
            owner.execute(statement)  # type: ignore[arg-type]

    # the worker and app roles really are limited
    with psycopg.connect(url("hyrex_worker"), autocommit=True) as conn:
        for statement in (
            "DROP TABLE hyrex_like.task",
            "CREATE TABLE hyrex_like.x (i int)",
            "DELETE FROM hyrex_like.task",
            "CREATE SCHEMA nope",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
    with psycopg.connect(url("hyrex_app"), autocommit=True) as conn:
        for statement in (
            "UPDATE hyrex_like.task SET priority = 1",
            "DELETE FROM hyrex_like.task",
            "DELETE FROM hyrex_like.task_run",
            "SELECT * FROM hyrex_like.worker",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]

    # every task below goes through the limited claim (the queue's row lock needs UPDATE)
    owner_hy = HyrexRegistry(url("hyrex_owner"), schema="hyrex_like")
    try:
        owner_hy.queue("default", concurrency_limit=2)
    finally:
        owner_hy.close()

    no_migrate = {"HYREX_LIKE_AUTO_MIGRATE": "false"}
    w = start_worker(
        "basic_app:hy",
        url("hyrex_worker"),
        "hyrex_like",
        tmp_path / "w.log",
        "--processes",
        "2",
        "--poll-interval",
        "0.2",
        env=no_migrate,
    )
    try:
        basic_app.hy.configure(
            database_url=url("hyrex_app"), schema_name="hyrex_like", auto_migrate=False
        )
        handles = [basic_app.echo.send({"n": i}) for i in range(5)]
        handles += basic_app.async_double.send_many([{"n": i} for i in range(5)])
        retried = basic_app.fail_once.send({"n": 1})
        for h in [*handles, retried]:
            assert h.wait(60).status == "completed", (h, w.log())
        assert [r.status for r in retried.task_runs] == ["failed", "completed"]
        listed = {q.name: q for q in basic_app.hy.queues()}  # the app role reads settings
        assert (listed["default"].concurrency_limit, listed["default"].running) == (2, 0)
        assert w.proc.poll() is None
        assert w.stop() == 0, w.log()
        assert "InsufficientPrivilege" not in w.log() and "permission denied" not in w.log()
        with psycopg.connect(url("hyrex_owner"), autocommit=True) as owner:
            row = owner.execute("SELECT status FROM hyrex_like.worker").fetchall()
        assert row == [("stopped",)]
    finally:
        w.kill()
        basic_app.hy.configure(auto_migrate=True)  # configure() merges: undo for other tests
        basic_app.hy.close()


def test_least_privilege_role_works_with_auto_migrate_on_when_schema_is_current(roles):
    names, url, grants = roles
    assert _cli("init-db", "--database-url", url("hyrex_owner")).returncode == 0
    with psycopg.connect(url("hyrex_owner"), autocommit=True) as owner:
        for statement in grants:
            owner.execute(statement)  # type: ignore[arg-type]
    hy = HyrexRegistry(url("hyrex_app"))  # auto_migrate defaults to on
    try:

        @hy.task
        def t(n: int) -> None:
            pass

        assert t.send(1).refresh().status == "queued"
    finally:
        hy.close()


# ------------------------------------------------------------------- no password leaks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://postgres:{pw}@127.0.0.1:{port}/test",
        "postgresql://postgres@127.0.0.1:{port}/test?password={pw}",
        "host=127.0.0.1 port={port} user=postgres password={pw} dbname=test",
        "postgresql://postgres:{pw}@127.0.0.1:notaport/test",
    ],
)
def test_password_never_in_exception_messages_or_cli_errors(template, schema):
    pw = "Sekr1t-" + uuid.uuid4().hex
    url = template.format(pw=pw, port=_free_port())
    hy = HyrexRegistry(url, schema=schema)

    @hy.task
    def t(n: int) -> None:
        pass

    try:
        with pytest.raises(HyrexLikeError) as info:
            t.send(1)
        assert pw not in _full_text(info.value)
        if isinstance(info.value, DatabaseError):
            assert "***" in str(info.value)  # the URL is shown, redacted
        with pytest.raises(HyrexLikeError) as info2:
            hy.migrate()
        assert pw not in _full_text(info2.value)
    finally:
        hy.close()
    for args in (("run-worker", "basic_app:hy", "--startup-timeout", "1"), ("init-db",)):
        proc = _cli(*args, "--database-url", url)
        assert proc.returncode == 2, proc.stderr
        assert "hyrex-like: error:" in proc.stderr
        assert pw not in proc.stderr + proc.stdout


def test_password_never_in_worker_logs(database_url, schema, tmp_path):
    pw = "Sekr1t-" + uuid.uuid4().hex
    # trust authentication ignores the password, so this URL works and the worker logs it
    url = conninfo.make_conninfo(database_url, password=pw)
    basic_app.hy.configure(database_url=url, schema_name=schema, auto_migrate=True)
    w = start_worker(
        "basic_app:hy",
        url,
        schema,
        tmp_path / "w.log",
        "--processes",
        "1",
        "--log-level",
        "debug",
        "--poll-interval",
        "0.2",
        "--heartbeat-interval",
        "0.2",
    )
    try:
        first = basic_app.fail_once.send({"n": 1})
        assert first.wait(60).status == "completed"

        # drop the worker's LISTEN connection (its last statement names our schema) so the
        # worker logs a lost connection and reconnects; other tests' connections are untouched
        def kill_listener() -> int:
            rows = query(
                database_url,
                schema,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'hyrex-like' AND query LIKE %s",
                (f"%LISTEN%{schema}%",),
            )
            return int(rows[0][0])

        wait_until(kill_listener, 30, what="the worker's LISTEN connection")
        wait_until(lambda: "database_connection_lost" in w.log(), 30, what="the drop logged")
        second = basic_app.echo.send({"n": 2})
        assert second.wait(60).status == "completed"
        assert w.stop() == 0
        log = w.log()
        assert "worker_started" in log and "task_retry_scheduled" in log
        assert "database_connection_lost" in log
        assert ":***@" in log or "password=***" in log  # the URL was logged, redacted
        assert pw not in log
    finally:
        w.kill()
        basic_app.hy.close()


def test_redaction_helper_covers_url_query_and_conninfo_forms():
    from hyrex_like.config import redact_dsn

    for dsn in (
        "postgresql://u:p%40ss@h/db",
        "postgresql://u@h/db?password=p%40ss&sslmode=off",
        "host=h user=u password='p@ss word' dbname=db",
    ):
        out = redact_dsn(dsn)
        assert "p%40ss" not in out and "p@ss" not in out and "***" in out
    assert Path(DOC).exists()
