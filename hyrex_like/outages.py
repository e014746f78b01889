"""Which database errors to wait out, and which to stop on at once.

A worker waits for a database that is down, restarting, starting up or full (connection refused
or reset, ``57P03`` "the database system is starting up", ``53300`` too many connections): those
heal by themselves. It stops at once when the database refuses it for a reason that waiting will
not fix: a wrong password, a missing role or database, a host ``pg_hba.conf`` does not let in,
missing privileges, a malformed URL. Anything not known to be permanent counts as an outage, so
an unfamiliar error keeps today's behaviour (retry until ``--startup-timeout``).

Errors from a statement carry their SQLSTATE and are judged by it. Errors raised while
connecting do not: libpq reads the server's SQLSTATE but keeps it to itself, and psycopg raises
a bare ``OperationalError`` (psycopg/psycopg#1188). Those are judged by libpq's message, each
phrase below standing for the SQLSTATE the server sent with it.
"""

from __future__ import annotations

import re

import psycopg

from .errors import ConfigurationError

# SQLSTATEs (or classes of them, two characters) that waiting does not fix.
_PERMANENT_STATES = {
    "28": "the server refused the credentials",  # invalid_authorization_specification, 28P01
    "3D000": "the database does not exist",  # invalid_catalog_name
    "42501": "the role lacks a privilege it needs",  # insufficient_privilege
}

# Phrases of libpq's connection errors (English, as libpq and the server write them by
# default), with the SQLSTATE the server sent for each.
_CONNECT_REFUSALS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"password authentication failed for user \"[^\"]*\"",  # 28P01
        r"no password supplied",  # libpq: the server asked for one (28P01 otherwise)
        r"role \"[^\"]*\" does not exist",  # 28000
        r"database \"[^\"]*\" does not exist",  # 3D000
        r"no pg_hba\.conf entry for [^\n]*",  # 28000
        r"pg_hba\.conf rejects connection [^\n]*",  # 28000
        r"role \"[^\"]*\" is not permitted to log in",  # 28000
        r"(peer|ident|ldap|radius|gss|sspi|cert) authentication failed for user \"[^\"]*\"",
        r"permission denied for database \"?[^\s\"]*\"?",  # 42501
        r"invalid [a-z_]+ value: \"[^\"]*\"",  # libpq: a bad option in the URL (sslmode=...)
        r"invalid (connection option|URI query parameter|integer value) \"[^\"]*\"",  # libpq
    )
]


def refusal(exc: BaseException) -> str | None:
    """Why the database refuses us for good, in a few words; None when waiting may help."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigurationError):
            return str(current)
        if isinstance(current, psycopg.Error) and current.sqlstate:
            state = current.sqlstate
            why = _PERMANENT_STATES.get(state) or _PERMANENT_STATES.get(state[:2])
            if why is None:
                return None  # a known state that heals: starting up, too many connections...
            primary = current.diag.message_primary
            return f"{why} ({primary})" if primary else why
        for pattern in _CONNECT_REFUSALS:
            match = pattern.search(str(current))
            if match:
                return match.group(0)
        # the store re-raises driver errors as its own, the original in __cause__/__context__
        current = current.__cause__ or current.__context__
    return None


URL_HINT = "check the URL given by --database-url or HYREX_LIKE_DATABASE_URL"
"""Where a refused URL comes from, for messages (``database_url=`` when set in code)."""
