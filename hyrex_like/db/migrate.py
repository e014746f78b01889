"""Migrations: the numbered files of ``sql/`` (shipped as ``hyrex_like/_sql``), applied in order
under an advisory lock, and the check that a schema is at this library's version."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import ConfigurationError, SchemaNotReady
from ..logs import get_logger
from .queries import q

# The database layer's events keep the logger name documented before it became a package.
log = get_logger("hyrex_like.db")

SCHEMA_VERSION_LOCK = 0x6879726578  # "hyrex": the advisory lock key for migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """The numbered migrations, in order, from the wheel or from a source checkout."""
    candidates: list[Path] = []
    packaged = resources.files("hyrex_like").joinpath("_sql")
    if packaged.is_dir():
        candidates = [Path(str(p)) for p in packaged.iterdir()]
    else:
        source = Path(__file__).resolve().parents[2] / "sql"  # hyrex_like/db/ -> the checkout
        if source.is_dir():
            candidates = list(source.iterdir())
    found = []
    for path in candidates:
        m = re.match(r"^(\d{4})_(\w+)\.sql$", path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path.read_text("utf-8")))
    if not found:
        raise ConfigurationError("hyrex-like is installed without its sql/ migrations")
    found.sort(key=lambda mig: mig.version)
    return found


def latest_version() -> int:
    return migrations()[-1].version


def check_version(schema: str, version: int | None) -> None:
    """Raise SchemaNotReady unless ``version`` is this library's."""
    latest = latest_version()
    if version is None or version < latest:
        raise SchemaNotReady(
            f"schema {schema!r} is at version {version}, this library needs {latest}: "
            "run `hyrex-like migrate`"
        )
    if version > latest:
        raise SchemaNotReady(
            f"schema {schema!r} is at version {version}, newer than this library "
            f"({latest}): upgrade hyrex-like"
        )


def check_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise SchemaNotReady unless the schema ``conn`` points at is at this library's version."""
    try:
        row = conn.execute(q("schema_version")).fetchone()
    except psycopg.errors.UndefinedTable:
        raise SchemaNotReady(
            f"schema {schema!r} has no hyrex-like tables: run "
            f"`hyrex-like init-db` (HYREX_LIKE_SCHEMA={schema})"
        ) from None
    check_version(schema, row[0] if row else None)


def apply_migrations(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply the missing migrations over ``conn`` (not in autocommit); safe when many
    processes start at once. Returns the versions applied."""
    applied: list[int] = []
    latest = latest_version()
    # Fast path, without the lock or any DDL: a current schema needs one read, so every
    # process start stays cheap and a role without CREATE rights can still start.
    row = conn.execute(q("migrations_table_exists")).fetchone()
    if row and row[0]:
        row = conn.execute(q("schema_version")).fetchone()
        if row and row[0] is not None and row[0] >= latest:
            conn.rollback()
            check_version(schema, row[0])
            return applied
    conn.rollback()
    ident = sql.Identifier(schema)
    # The advisory lock serialises concurrent migrators; the loser then sees the
    # winner's work and applies nothing.
    conn.execute(q("lock_migrations"), {"key": SCHEMA_VERSION_LOCK})
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    conn.execute(q("create_migrations_table"))
    row = conn.execute(q("schema_version")).fetchone()
    current = row[0] if row and row[0] is not None else 0
    if current > latest:
        conn.rollback()
        check_version(schema, current)
    for mig in migrations():
        if mig.version <= current:
            continue
        conn.execute(mig.text)
        conn.execute(q("record_migration"), {"version": mig.version, "name": mig.name})
        applied.append(mig.version)
    conn.commit()
    if applied:
        log.info("schema_migrated", schema=schema, versions=applied)
    return applied
