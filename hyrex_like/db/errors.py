"""Driver errors as this package's: a psycopg error becomes a `DatabaseError` (or
`SchemaNotReady`) that names what was being done, with the driver's error as its cause."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

from ..errors import DatabaseError, SchemaNotReady


def _translate(exc: psycopg.Error, what: str) -> DatabaseError:
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return SchemaNotReady(
            "the hyrex-like tables are missing from this database/schema: "
            "run `hyrex-like init-db` (or enable auto_migrate)"
        )
    if isinstance(
        exc, psycopg.errors.UntranslatableCharacter | psycopg.errors.CharacterNotInRepertoire
    ):
        return DatabaseError(f"{what}: PostgreSQL rejected the text: {exc.diag.message_primary}")
    return DatabaseError(f"{what} failed: {type(exc).__name__}: {exc}")


def _retry_failed(what: str, first: psycopg.Error, again: psycopg.Error) -> DatabaseError:
    """The error of a send whose retry (see `hyrex_like.db.sends`) failed too: both causes."""
    if isinstance(again, PoolTimeout):
        retry = f"no connection within connect_timeout ({again})"
    else:
        retry = f"{type(again).__name__}: {again}"
    return DatabaseError(
        f"{what} failed: its connection was lost ({type(first).__name__}: "
        f"{str(first).strip()}); retried once on a fresh connection: {retry}"
    )
