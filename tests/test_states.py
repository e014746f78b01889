"""hyrex_like/states.py against the places statuses are also written: the constraints of a
migrated schema, the status literals of queries.sql and the transitions drawn in
sql/schema.sql."""

from __future__ import annotations

import ast
import enum
import re

import psycopg
import pytest

from hyrex_like import HyrexRegistry
from hyrex_like.states import (
    RUN_FINAL,
    RUN_TRANSITIONS,
    RUN_UNFINISHED,
    TASK_FINAL,
    TASK_TRANSITIONS,
    TASK_UNFINISHED,
    RunStatus,
    TaskStatus,
    WorkerStatus,
    WorkflowState,
    WorkflowStatus,
    task_can_move,
)

from .helpers import ROOT

STATUS_COLUMNS: list[tuple[str, type[enum.StrEnum]]] = [
    ("task", TaskStatus),
    ("task_run", RunStatus),
    ("worker", WorkerStatus),
    ("workflow", WorkflowState),  # (its column is state: what was done to the run)
]
_COLUMN = {"workflow": "state"}  # the others' is status
ALL_STATUSES = {str(s) for _, statuses in STATUS_COLUMNS for s in statuses} | {
    str(s)
    for s in WorkflowStatus  # a run's summary: never stored, read from its steps
}

# The CHECK constraints that bound a column, on the table or on the column's domain.
_COLUMN_CHECKS = """
    SELECT con.conname, pg_get_constraintdef(con.oid), pg_get_expr(d.adbin, d.adrelid)
    FROM pg_class AS c
    JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = %(column)s
    LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
    JOIN pg_constraint AS con
      ON con.contype = 'c'
     AND ((con.conrelid = c.oid AND con.conkey = ARRAY[a.attnum]) OR con.contypid = a.atttypid)
    WHERE c.relnamespace = %(schema)s::regnamespace AND c.relname = %(table)s
"""
# What PostgreSQL shows for `col IN ('a', 'b')` (or `VALUE IN (...)` on a domain).
_IN_LIST = re.compile(r"^CHECK \(\(\w+ = ANY \(ARRAY\[((?:'\w+'::text(?:, )?)+)\]\)\)\)$")
_TEXT_LITERAL = re.compile(r"'(\w+)'::text")

Constraints = dict[str, list[tuple[str, str, str | None]]]


@pytest.fixture
def constraints(database_url: str, schema: str) -> Constraints:
    """Each status column's checks (name, definition, column default) in a migrated schema."""
    hy = HyrexRegistry(database_url, schema=schema)
    try:
        hy.migrate()
    finally:
        hy.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {
            table: conn.execute(
                _COLUMN_CHECKS,
                {"schema": schema, "table": table, "column": _COLUMN.get(table, "status")},
            ).fetchall()
            for table, _ in STATUS_COLUMNS
        }


@pytest.mark.parametrize(("table", "statuses"), STATUS_COLUMNS, ids=[t for t, _ in STATUS_COLUMNS])
def test_database_allows_exactly_the_enum_statuses(
    constraints: Constraints, table: str, statuses: type[enum.StrEnum]
) -> None:
    checks = constraints[table]
    assert len(checks) == 1, f"{table}.status should have one CHECK, found {checks}"
    name, definition, _ = checks[0]
    m = _IN_LIST.match(definition)
    assert m, f"{table}.status: {name} is not a plain IN list: {definition}"
    allowed = _TEXT_LITERAL.findall(m.group(1))
    assert sorted(allowed) == sorted(s.value for s in statuses)
    assert len(allowed) == len(set(allowed))


@pytest.mark.parametrize(("table", "statuses"), STATUS_COLUMNS, ids=[t for t, _ in STATUS_COLUMNS])
def test_status_column_defaults_are_enum_members(
    constraints: Constraints, table: str, statuses: type[enum.StrEnum]
) -> None:
    default = constraints[table][0][2]
    m = re.fullmatch(r"'(\w+)'::text", default or "")
    assert m, f"{table}.status default: {default!r}"
    assert m.group(1) in {s.value for s in statuses}


def test_task_status_domain_takes_every_member_and_refuses_a_near_miss(
    database_url: str, schema: str, constraints: Constraints
) -> None:
    # The parsed list above is what the server enforces, not just what it prints.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", [schema])
        for status in TaskStatus:
            conn.execute("SELECT %s::task_status", [status])
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("SELECT %s::task_status", ["cancelled"])


def test_members_reach_postgres_as_their_values(database_url: str) -> None:
    # psycopg dumps a plain Enum by its *name*; a StrEnum must go as the stored string.
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT %s::text, %s::text", [TaskStatus.QUEUED, RunStatus.TIMED_OUT]
        ).fetchone()
    assert row == ("queued", "timed_out")


# -------------------------------------------------------------------------- queries.sql

QUERIES = ROOT / "hyrex_like" / "queries.sql"

# Lower-case words in quotes that are not statuses: JSON keys of last_error, the prefix of the
# NOTIFY channel, a table name. A new such word goes here; a new status goes in states.py.
NOT_STATUSES = {
    "type",
    "message",
    "attempt",
    "hyrex_like_",
    "schema_migrations",
    # server settings the upkeep connection sets (watch_client)
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "tcp_user_timeout",
    # the NOTIFY payload that wakes workers for the limited claim only (notify_limited)
    "limited",
}

_STRING_OR_COMMENT = re.compile(r"('(?:[^']|'')*')|--[^\n]*")
_STATUS = r"\b\w*status\b"
_STATUS_CONTEXTS = [
    # status = 'x', t.status <> 'x', run_status != 'x'
    re.compile(rf"{_STATUS}\s*(?:=|<>|!=)\s*('\w*')", re.I),
    # status IN ('x', 'y'), status NOT IN (...)
    re.compile(rf"{_STATUS}\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", re.I),
    # 'x'::text AS status
    re.compile(rf"('\w*')(?:::\w+)?\s+AS\s+{_STATUS}", re.I),
    # status = CASE WHEN ... THEN 'x' ... ELSE 'y' END: the values a status is set to
    re.compile(rf"{_STATUS}\s*=\s*CASE\b(.*?)\bEND\b", re.I | re.S),
]
_CASE_RESULT = re.compile(r"\b(?:THEN|ELSE)\s+('\w*')", re.I)


def without_comments(text: str) -> str:
    """The SQL with its ``--`` comments removed (a ``--`` inside a string is kept)."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group(1) or "", text)


def status_literals(text: str) -> list[str]:
    """The quoted strings that stand next to a status column: compared with it, listed in an
    IN with it, aliased as it, or the results of a CASE assigned to it."""
    code = without_comments(text)
    found: list[str] = []
    for i, pattern in enumerate(_STATUS_CONTEXTS):
        for m in pattern.finditer(code):
            part = m.group(1)
            literals = _CASE_RESULT.findall(part) if i == 3 else re.findall(r"'\w*'", part)
            found += [lit.strip("'") for lit in literals]
    return found


def test_status_literal_parser_finds_each_context() -> None:
    sample = """
        -- a comment naming status = 'ignored'
        SELECT 'running'::text AS status FROM t
        WHERE t.status = 'queued' AND run_status <> 'done' AND i.status IN ('a', 'b')
        UPDATE t SET status = CASE WHEN x THEN 'c' WHEN y THEN 'd' ELSE 'e' END, n = 1
    """
    assert sorted(status_literals(sample)) == sorted(
        ["running", "queued", "done", "a", "b", "c", "d", "e"]
    )


def test_every_status_literal_in_queries_is_an_enum_member() -> None:
    found = status_literals(QUERIES.read_text("utf-8"))
    assert len(found) >= 20, f"the parser found too few status literals to be working: {found}"
    unknown = sorted(set(found) - ALL_STATUSES)
    assert not unknown, f"queries.sql compares or sets a status to unknown values {unknown}"


def test_every_status_like_word_in_queries_is_a_status() -> None:
    # Catches a status the context patterns miss, e.g. a positional INSERT ... SELECT 'running'.
    code = without_comments(QUERIES.read_text("utf-8"))
    literals = (m.group(1).strip("'") for m in _STRING_OR_COMMENT.finditer(code) if m.group(1))
    words = {lit for lit in literals if re.fullmatch(r"[a-z_]+", lit)}
    assert {"queued", "interrupted", "stopped"} <= words
    unknown = sorted(words - ALL_STATUSES - NOT_STATUSES)
    assert not unknown, (
        f"queries.sql uses {unknown}: add a status to hyrex_like/states.py, or list a word that "
        "is not a status in NOT_STATUSES here"
    )


# -------------------------------------------------------------------------- transitions


def test_task_transitions_cover_every_status_and_final_ones_lead_nowhere() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert TASK_FINAL | TASK_UNFINISHED == set(TaskStatus)
    assert not TASK_FINAL & TASK_UNFINISHED
    for status, targets in TASK_TRANSITIONS.items():
        assert status not in targets
        assert (not targets) == (status in TASK_FINAL), status


def test_every_task_status_is_reachable_from_queued_and_every_task_can_finish() -> None:
    def reachable(start: TaskStatus) -> set[TaskStatus]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TASK_TRANSITIONS[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert reachable(TaskStatus.QUEUED) == set(TaskStatus)
    for status in TASK_UNFINISHED:
        assert reachable(status) & TASK_FINAL, status


def test_task_can_move_follows_the_table() -> None:
    assert task_can_move(TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert task_can_move(TaskStatus.RUNNING, TaskStatus.QUEUED)
    assert not task_can_move(TaskStatus.QUEUED, TaskStatus.COMPLETED)
    assert not task_can_move(TaskStatus.COMPLETED, TaskStatus.QUEUED)


def test_run_closes_once_from_running() -> None:
    assert RUN_FINAL | RUN_UNFINISHED == set(RunStatus) and not RUN_FINAL & RUN_UNFINISHED
    assert RUN_TRANSITIONS[RunStatus.RUNNING] == RUN_FINAL
    assert all(not RUN_TRANSITIONS[s] for s in RUN_FINAL)


def test_transitions_drawn_in_schema_file_match_the_table() -> None:
    text = (ROOT / "sql" / "schema.sql").read_text("utf-8")
    drawn = re.findall(r"^--\s+(\w+)\s+->\s+(\w+)\s", text, re.M)
    assert sorted(drawn) == sorted(
        (str(old), str(new)) for old, targets in TASK_TRANSITIONS.items() for new in targets
    )
    final = re.search(r"^-- ([\w, ]+) are final\.$", text, re.M)
    assert final, "schema.sql should say which task statuses are final"
    assert set(re.split(r", | and ", final.group(1))) == {str(s) for s in TASK_FINAL}


def test_statuses_equal_the_strings_they_store() -> None:
    stored: str = "queued"  # as read back from a row
    assert stored == TaskStatus.QUEUED and f"{RunStatus.TIMED_OUT}" == "timed_out"
    assert "completed" in TASK_FINAL


def test_the_package_names_statuses_only_through_the_enums() -> None:
    # A status spelled as a bare string outside states.py would be a second definition of it.
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for path in sorted((ROOT / "hyrex_like").rglob("*.py"))
        if path.name != "states.py"
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.Constant) and node.value in ALL_STATUSES
    ]
    assert not found, "use TaskStatus/RunStatus/WorkerStatus (hyrex_like/states.py) instead"
