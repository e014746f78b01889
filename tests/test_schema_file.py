"""sql/schema.sql is what the migrations produce: migrations 1..N go into one fresh schema (the
store's own runner), sql/schema.sql into another (the same way: search_path set to that schema,
the whole text in one execute, after the runner's schema_migrations table), and the two
catalogs must agree object by object. The second schema lives in a transaction that is rolled
back, so nothing of it outlives the test."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hyrex_like import HyrexRegistry
from hyrex_like.db import latest_version, q

from .helpers import ROOT

SCHEMA_FILE = ROOT / "sql" / "schema.sql"

# Each query takes the inspected schema as %(schema)s and returns (key, description...) rows;
# the catalog of a schema is {key: description}. Everything a migration can create is here,
# except ownership and grants (the two schemas have the same owner by construction).
_CATALOG: dict[str, str] = {
    "relation": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
               array(SELECT o FROM unnest(c.reloptions) AS o ORDER BY o),
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
               format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
               s.seqcache, s.seqcycle, obj_description(c.oid, 'pg_class')
        FROM pg_class AS c
        LEFT JOIN pg_sequence AS s ON s.seqrelid = c.oid
        WHERE c.relnamespace = %(schema)s::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    """,
    # Position among the live columns: a dropped column leaves a gap in attnum (migration 2
    # dropped task_run.id), which a table created whole does not have.
    "column": """
        SELECT c.relname || '.' || a.attname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
               format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation END,
               col_description(c.oid, a.attnum)
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        JOIN pg_type AS t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(schema)s::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraint": """
        SELECT coalesce(c.relname, t.typname) || '.' || con.conname, con.contype,
               pg_get_constraintdef(con.oid), con.convalidated, con.condeferrable,
               con.condeferred
        FROM pg_constraint AS con
        LEFT JOIN pg_class AS c ON c.oid = con.conrelid
        LEFT JOIN pg_type AS t ON t.oid = con.contypid
        WHERE con.connamespace = %(schema)s::regnamespace
    """,
    "index": """
        SELECT i.relname, pg_get_indexdef(i.oid), x.indisunique, x.indisprimary
        FROM pg_index AS x
        JOIN pg_class AS i ON i.oid = x.indexrelid
        WHERE i.relnamespace = %(schema)s::regnamespace
    """,
    # Domains, enums, ranges and free-standing composite types (not the row type of a table,
    # nor the array types PostgreSQL makes for each type).
    "type": """
        SELECT t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               t.typdefault,
               array(SELECT e.enumlabel FROM pg_enum AS e WHERE e.enumtypid = t.oid
                     ORDER BY e.enumsortorder),
               obj_description(t.oid, 'pg_type')
        FROM pg_type AS t
        WHERE t.typnamespace = %(schema)s::regnamespace
          AND (t.typtype IN ('d', 'e', 'r', 'm')
               OR (t.typtype = 'c'
                   AND (SELECT c.relkind FROM pg_class AS c WHERE c.oid = t.typrelid) = 'c'))
    """,
    "function": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid)
                    ELSE p.prokind::text END,
               obj_description(p.oid, 'pg_proc')
        FROM pg_proc AS p
        WHERE p.pronamespace = %(schema)s::regnamespace
    """,
    "trigger": """
        SELECT c.relname || '.' || g.tgname, pg_get_triggerdef(g.oid), g.tgenabled
        FROM pg_trigger AS g
        JOIN pg_class AS c ON c.oid = g.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT g.tgisinternal
    """,
}


def catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """Every object of ``schema`` as ``"kind name" -> description``, the schema's name removed
    (pg_get_indexdef and pg_get_triggerdef always qualify the table)."""
    # Inspected with search_path on the schema, so type names come out unqualified too.
    conn.execute("SELECT set_config('search_path', %s, true)", [schema])
    prefix = re.compile(rf'(?:"{re.escape(schema)}"|\b{re.escape(schema)})\.')
    # functions made with "SET search_path FROM CURRENT" carry the schema's name as a setting
    setting = re.compile(rf"search_path TO '?\"?{re.escape(schema)}\"?'?")
    found: dict[str, str] = {}
    for kind, query in _CATALOG.items():
        for key, *rest in conn.execute(query, {"schema": schema}).fetchall():
            found[f"{kind} {key}"] = setting.sub(
                "search_path TO <schema>", prefix.sub("", repr(tuple(rest)))
            )
    return found


def diff(migrated: dict[str, str], from_file: dict[str, str]) -> list[str]:
    """One line per object that is missing on either side or described differently."""
    lines = []
    for key in sorted(migrated.keys() | from_file.keys()):
        if key not in from_file:
            lines.append(f"{key}: made by the migrations, missing from schema.sql")
        elif key not in migrated:
            lines.append(f"{key}: made by schema.sql, not by the migrations")
        elif migrated[key] != from_file[key]:
            lines.append(f"{key}: migrations {migrated[key]} != schema.sql {from_file[key]}")
    return lines


def compare_with_migrations(database_url: str, migrated: str, schema_text: str) -> list[str]:
    """Apply ``schema_text`` to a fresh schema beside ``migrated`` (already migrated) and diff
    the two catalogs; the fresh schema is rolled back afterwards."""
    other = f"{migrated}_file"
    with psycopg.connect(database_url) as conn:
        try:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
            conn.execute("SELECT set_config('search_path', %s, true)", [other])
            conn.execute(q("create_migrations_table"))
            conn.execute(schema_text)  # one execute without parameters, as the runner does
            return diff(catalog(conn, migrated), catalog(conn, other))
        finally:
            conn.rollback()


@pytest.fixture
def migrated(database_url: str, schema: str) -> str:
    """The test's schema with every migration applied by the store's own runner."""
    hy = HyrexRegistry(database_url, schema=schema)
    try:
        assert hy.migrate() == list(range(1, latest_version() + 1))
    finally:
        hy.close()
    return schema


def test_schema_file_matches_what_the_migrations_produce(database_url: str, migrated: str) -> None:
    text = SCHEMA_FILE.read_text("utf-8")
    assert compare_with_migrations(database_url, migrated, text) == []


def test_catalog_covers_every_kind_of_object_the_migrations_make(
    database_url: str, migrated: str
) -> None:
    # Guards the comparison itself: were a catalog query to find nothing, the two empty
    # results would agree.
    with psycopg.connect(database_url) as conn:
        found = catalog(conn, migrated)
    kinds = {key.split(" ", 1)[0] for key in found}
    assert {"relation", "column", "constraint", "index", "type"} <= kinds
    assert {"relation task", "column task_run.status", "index task_claim_idx"} <= found.keys()
    assert "constraint task_status.task_status_known" in found
    assert "WHERE" in found["index task_claim_idx"]


def test_schema_file_is_at_the_latest_migration_version() -> None:
    first = SCHEMA_FILE.read_text("utf-8").splitlines()[0]
    m = re.match(r"-- hyrex-like schema, version (\d+):", first)
    assert m, f"sql/schema.sql must start with its version, found {first!r}"
    assert int(m.group(1)) == latest_version()


def _drop_statement(start: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        edited, n = re.subn(rf"^{re.escape(start)}[^;]*;\n", "", text, flags=re.M)
        assert n == 1, f"no single statement starting {start!r} in schema.sql"
        return edited

    return edit


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} is not in schema.sql exactly once"
        return text.replace(old, new)

    return edit


@pytest.mark.parametrize(
    ("edit", "reported"),
    [
        pytest.param(
            _drop_statement("CREATE INDEX task_running_idx"),
            "index task_running_idx: made by the migrations, missing from schema.sql",
            id="index-dropped",
        ),
        pytest.param(
            _replace(
                "task_claim_idx ON task (priority DESC, run_after, id) WHERE status = 'queued'",
                "task_claim_idx ON task (priority DESC, run_after, id) WHERE status <> 'queued'",
            ),
            "index task_claim_idx: migrations",
            id="index-predicate-changed",
        ),
        pytest.param(
            _replace("'timed_out', 'lost',", "'timed_out',"),
            "constraint task_run.task_run_status_check: migrations",
            id="check-value-dropped",
        ),
        pytest.param(
            _replace("task_status NOT NULL DEFAULT 'queued'", "task_status NOT NULL"),
            "column task.status: migrations",
            id="default-dropped",
        ),
        pytest.param(
            _replace("fillfactor = 75", "fillfactor = 80"),
            "relation task_run: migrations",
            id="storage-option-changed",
        ),
        pytest.param(
            _replace("    finished_at      timestamptz,\n", ""),
            "column task.finished_at: made by the migrations, missing from schema.sql",
            id="column-dropped",
        ),
    ],
)
def test_comparison_reports_an_edited_schema_file(
    database_url: str, migrated: str, edit: Callable[[str], str], reported: str
) -> None:
    text = edit(SCHEMA_FILE.read_text("utf-8"))
    report = compare_with_migrations(database_url, migrated, text)
    assert any(line.startswith(reported) for line in report), report
