"""The plans of the inspection reads (#18) on a big table: each must be an index path.

    python bench/inspect_plans.py postgresql://postgres@127.0.0.1/test          # 1,000,000 rows
    python bench/inspect_plans.py URL --quick                                   # 20,000 rows
    python bench/inspect_plans.py URL --rows 100000 --backlog 0 --json plans.json

Loads, into a schema of its own (``inspect_plans`` unless --schema; dropped at the end unless
--keep), N finished tasks with one run each (ids time-ordered like UUIDv7, so the primary key
order matches created_at; 3% failed, 1% canceled, 1% sent by another task), 2,000 queued
(some delayed), 50 running, a backlog of --backlog more queued tasks (200,000 by default,
sent in the half hour before those), 20 steps of paused workflows, a day of queue_minute
tallies and 20,000 ended workers, then VACUUM ANALYZE. Then EXPLAIN (ANALYZE, BUFFERS) of every
statement behind hy.list_tasks, hy.task_detail, hy.stats, hy.throughput and hy.list_workers, each
prepared and run with plan_cache_mode = force_custom_plan and then force_generic_plan (a
pooled connection switches to the generic plan after five runs), and prints a markdown table.
It fails (exit 1) if any plan reads task, task_run or queue_minute with a Seq Scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyrex_like import HyrexRegistry  # noqa: E402
from hyrex_like.db.queries import numbered  # noqa: E402

BIG_TABLES = frozenset({"task", "task_run", "queue_minute", "worker"})

# A UUIDv7-like id made at ts: its millisecond, then bits of a hash of seed.
_V7 = """
CREATE FUNCTION pg_temp.v7(seed text, ts timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(seed), 1, 3) || '8' || substr(md5(seed), 4, 15))::uuid
$$
"""
LOAD = [
    # Row g was created at b.at + g * 10 ms: the newest an hour ago.
    """
    INSERT INTO task (id, task_name, queue, priority, status, args, attempt_count,
                      failure_count, run_after, created_at, started_at, finished_at, result,
                      last_error, parent_id)
    SELECT pg_temp.v7(g::text, b.at + g * interval '10 ms'), 'task_' || mod(g, 20),
           'q' || mod(g, 5),
           5, CASE WHEN mod(g, 100) = 7 THEN 'canceled' WHEN mod(g, 33) = 0 THEN 'failed'
                   ELSE 'completed' END,
           jsonb_build_object('i', g), 1, (mod(g, 33) = 0)::int,
           b.at + g * interval '10 ms', b.at + g * interval '10 ms',
           b.at + g * interval '10 ms', b.at + g * interval '10 ms' + interval '5 ms',
           'null'::jsonb, NULL,
           CASE WHEN mod(g, 100) = 50
                THEN pg_temp.v7((g - 1)::text, b.at + (g - 1) * interval '10 ms') END
    FROM (SELECT now() - interval '1 hour' - %(n)s * interval '10 ms' AS at) AS b,
         generate_series(1, %(n)s) AS g
    """,
    """
    INSERT INTO task_run (task_id, attempt_number, status, worker_id, claimed_at, started_at,
                          finished_at, result, error_type, error_message)
    SELECT id, 1, status, NULL, started_at, started_at, finished_at, result,
           CASE WHEN status = 'failed' THEN 'ValueError' END,
           CASE WHEN status = 'failed' THEN 'bad input' END
    FROM task
    """,
    # 2,000 queued (a tenth delayed by an hour), 50 running, made in the last minutes.
    """
    INSERT INTO task (id, task_name, queue, priority, status, args, run_after, created_at,
                      worker_id)
    SELECT pg_temp.v7('live' || g, now() - interval '10 minutes' + g * interval '100 ms'),
           'task_' || (mod(g, 20)), 'q' || (mod(g, 5)), 1 + mod(g, 10),
           CASE WHEN g <= 50 THEN 'running' ELSE 'queued' END, '{}'::jsonb,
           now() - interval '10 minutes' + g * interval '100 ms'
               + CASE WHEN mod(g, 10) = 3 THEN interval '1 hour' ELSE interval '0' END,
           now() - interval '10 minutes' + g * interval '100 ms',
           CASE WHEN g <= 50 THEN '00000000-0000-7000-8000-000000000001'::uuid END
    FROM generate_series(1, 2050) AS g
    """,
    """
    INSERT INTO task_run (task_id, attempt_number, status, worker_id)
    SELECT id, 1, 'running', worker_id FROM task WHERE status = 'running'
    """,
    # The backlog (--backlog): queued tasks sent in the last minutes, older than the live ones.
    """
    INSERT INTO task (id, task_name, queue, priority, status, args, run_after, created_at)
    SELECT pg_temp.v7('backlog' || g, now() - interval '30 minutes' + g * interval '1 ms'),
           'task_' || mod(g, 20), 'q' || mod(g, 5), 1 + mod(g, 10), 'queued', '{}'::jsonb,
           now() - interval '30 minutes' + g * interval '1 ms',
           now() - interval '30 minutes' + g * interval '1 ms'
    FROM generate_series(1, %(backlog)s) AS g
    """,
    # Two paused workflows of ten paused steps, among 1,000 completed ones.
    """
    INSERT INTO workflow (id, name, state, steps, args, created_at, paused_at)
    SELECT pg_temp.v7('flow' || g, now() - interval '2 hours' + g * interval '1 s'), 'flow',
           CASE WHEN g <= 2 THEN 'paused' ELSE 'completed' END, '[]'::jsonb, '{}'::jsonb,
           now() - interval '2 hours' + g * interval '1 s',
           CASE WHEN g <= 2 THEN now() END
    FROM generate_series(1, 1000) AS g
    """,
    """
    INSERT INTO task (id, task_name, queue, status, args, created_at, workflow_id,
                      workflow_step)
    SELECT pg_temp.v7(w.id::text || s, now() - interval '5 minutes'), 'step', 'q0',
           'paused', '{}'::jsonb, now() - interval '5 minutes', w.id, s
    FROM workflow AS w, generate_series(0, 9) AS s
    WHERE w.state = 'paused'
    """,
    # A day of tallies from 5 workers: queue x minute x (completed, failed), ~ 20k rows.
    """
    INSERT INTO queue_minute (minute, worker_id, queue, status, attempts, run_seconds)
    SELECT date_trunc('hour', now()) - m * interval '1 minute' + interval '1 hour',
           ('00000000-0000-7000-8000-00000000000' || w)::uuid, 'q' || q, s, 10, 0.5
    FROM generate_series(0, 1439) AS m, generate_series(1, 5) AS w, generate_series(0, 1) AS q,
         unnest(ARRAY['completed', 'failed']) AS s
    WHERE date_trunc('hour', now()) - m * interval '1 minute' + interval '1 hour' <= now()
    """,
    """
    INSERT INTO worker (id, hostname, pid, processes, status, started_at, heartbeat_at,
                        stopped_at)
    SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'host', g, 4,
           CASE WHEN g = 1 THEN 'running' ELSE 'stopped' END,
           now() - g * interval '1 hour', now(),
           CASE WHEN g > 1 THEN now() - g * interval '1 hour' END
    FROM generate_series(1, 20000) AS g
    """,
]

TOP = uuid.UUID(int=(1 << 128) - 1)
BOTTOM = uuid.UUID(int=0)


@dataclass
class Plan:
    read: str
    statement: str
    mode: str
    ms: float
    buffers: int
    scans: list[str]
    seq_big: list[str]


def load(url: str, schema: str, rows: int, backlog: int = 0) -> float:
    """Create ``schema`` (migrated) and fill it, with ``backlog`` more queued tasks; returns
    the seconds it took."""
    t0 = time.monotonic()
    hy = HyrexRegistry(url, schema=schema)
    hy.store.pool()  # migrates
    hy.close()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        c.execute(_V7)
        for statement in LOAD:
            params = {"n": rows, "backlog": backlog}
            used = {k: v for k, v in params.items() if f"%({k})s" in statement}
            c.execute(statement, used or None)  # type: ignore[call-overload]
        for table in ("task", "task_run", "queue_minute", "worker", "workflow"):
            c.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    return time.monotonic() - t0


def _sample(c: psycopg.Connection[Any]) -> dict[str, Any]:
    """Ids to look things up by: a task with runs and a parent, one deep in the table."""
    child = c.execute("SELECT id, parent_id FROM task WHERE parent_id IS NOT NULL LIMIT 1")
    child_id, parent_id = child.fetchone() or (None, None)
    middle = c.execute(
        "SELECT id FROM task ORDER BY id OFFSET (SELECT count(*) / 2 FROM task) LIMIT 1"
    ).fetchone()
    queued = c.execute(  # where a first page of queued tasks ends
        "SELECT id FROM task WHERE status = 'queued' ORDER BY id DESC OFFSET 49 LIMIT 1"
    ).fetchone()
    return {
        "child": child_id,
        "parent": parent_id,
        "middle": middle[0] if middle else TOP,
        "queued": queued[0] if queued else TOP,
    }


def reads(sample: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(what the caller asked for, statement, its parameters)."""
    page = {
        "name": None,
        "queue": None,
        "status": None,
        "since": None,
        "floor": BOTTOM,
        "after": TOP,
        "limit": 50,
        "budget": 20_000,
    }
    since = {"since": "now() - 2h", "floor": BOTTOM}
    return [
        ("list_tasks() first page", "inspect_tasks", page),
        ("list_tasks(after=middle)", "inspect_tasks", page | {"after": sample["middle"]}),
        ("list_tasks(name=) sparse", "inspect_tasks", page | {"name": "task_3"}),
        ("list_tasks(name=absent): the whole budget", "inspect_tasks", page | {"name": "absent"}),
        ("list_tasks(status=failed)", "inspect_tasks", page | {"status": "failed"}),
        ("  where the budget ended", "inspect_tasks_scanned", page),
        ("list_tasks(since=2h ago)", "inspect_tasks", page | since),
        ("list_tasks(status=queued)", "inspect_tasks", page | {"status": "queued"}),
        (
            "list_tasks(status=queued, queue=)",
            "inspect_tasks",
            page | {"status": "queued", "queue": "q1"},
        ),
        (
            "list_tasks(status=queued) page 2",
            "inspect_tasks",
            page | {"status": "queued", "after": sample["queued"]},
        ),
        ("list_tasks(status=running)", "inspect_tasks_running", page),
        (
            "list_tasks(status=running, queue=)",
            "inspect_tasks_running_in_queue",
            page | {"queue": "q1"},
        ),
        ("list_tasks(status=paused)", "inspect_tasks_paused", page),
        ("task_detail: row", "get_task", {"id": sample["child"]}),
        ("task_detail: runs", "get_task_runs", {"id": sample["child"]}),
        ("task_detail: parent", "inspect_task_summary", {"id": sample["parent"]}),
        ("task_detail: children", "inspect_children", {"id": sample["parent"]}),
        ("stats: queues", "inspect_queue_stats", {"minutes": 5}),
        ("stats: ended in window", "inspect_throughput", {"minutes": 5}),
        ("stats: workers alive", "inspect_workers_alive", {}),
        ("throughput(60)", "inspect_throughput_minutes", {"minutes": 60}),
        ("list_workers()", "list_workers", {"recent": 3600.0}),
    ]


def _walk(node: dict[str, Any], scans: list[str], seq_big: list[str]) -> None:
    kind = node.get("Node Type", "")
    relation = node.get("Relation Name")
    index = node.get("Index Name")
    if relation or index:
        scans.append(f"{kind} {index}" if index else f"{kind} {relation}")
    if kind == "Seq Scan" and relation in BIG_TABLES:
        seq_big.append(relation)
    for child in node.get("Plans", []):
        _walk(child, scans, seq_big)


def explain(c: psycopg.Connection[Any], statement: str, params: dict[str, Any], mode: str) -> Plan:
    """EXPLAIN (ANALYZE, BUFFERS) of ``statement`` prepared, under plan_cache_mode ``mode``."""
    n = numbered(statement)
    values = []
    for key in n.order:
        value = params[key]
        if value == "now() - 2h":
            values.append(sql.SQL("now() - interval '2 hours'"))
        else:
            values.append(sql.Literal(value))
    c.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Literal(mode)))
    c.execute(sql.SQL("PREPARE inspect_plan AS ") + sql.SQL(n.statement.decode()))  # type: ignore[arg-type]
    try:
        args = sql.SQL("({})").format(sql.SQL(", ").join(values)) if values else sql.SQL("")
        row = c.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE inspect_plan") + args
        ).fetchone()
    finally:
        c.execute("DEALLOCATE inspect_plan")
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    top = doc[0]
    plan = top["Plan"]
    scans: list[str] = []
    seq_big: list[str] = []
    _walk(plan, scans, seq_big)
    buffers = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))
    return Plan("", statement, mode, float(top["Execution Time"]), buffers, scans, seq_big)


def explain_all(url: str, schema: str) -> list[Plan]:
    out = []
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        sample = _sample(c)
        for read, statement, params in reads(sample):
            for mode in ("force_custom_plan", "force_generic_plan"):
                plan = explain(c, statement, params, mode)
                plan.read = read
                out.append(plan)
    return out


def _scans(p: Plan) -> str:
    seen: list[str] = []
    for s in p.scans:
        if s.strip() not in seen:
            seen.append(s.strip())
    return "; ".join(seen)


def table(plans: list[Plan]) -> str:
    lines = [
        "| read | statement | custom plan: scans | ms | buffers "
        "| generic plan: scans | ms | buffers |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    by = {(p.read, p.mode): p for p in plans}
    for read in dict.fromkeys(p.read for p in plans):
        c, g = by[(read, "force_custom_plan")], by[(read, "force_generic_plan")]
        lines.append(
            f"| {read.strip()} | `{c.statement}` | {_scans(c)} | {c.ms:.2f} | {c.buffers} "
            f"| {'same' if _scans(g) == _scans(c) else _scans(g)} | {g.ms:.2f} | {g.buffers} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url", help="a database URL (a schema of its own is created there)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="finished tasks to load")
    ap.add_argument("--quick", action="store_true", help="20,000 finished tasks (CI smoke)")
    ap.add_argument(
        "--backlog", type=int, default=200_000, help="queued tasks to add (default: 200,000)"
    )
    ap.add_argument("--schema", default="inspect_plans")
    ap.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    ap.add_argument("--json", type=Path, default=None, help="also write the plans here")
    args = ap.parse_args(argv)
    rows = 20_000 if args.quick else args.rows
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(args.schema))
    with psycopg.connect(args.url, autocommit=True) as c:
        c.execute(drop)
    try:
        seconds = load(args.url, args.schema, rows, args.backlog)
        with psycopg.connect(args.url, autocommit=True) as c:
            version = c.execute("SHOW server_version").fetchone()
            sizes = c.execute(
                "SELECT pg_size_pretty(pg_total_relation_size(%s)), "
                "pg_size_pretty(pg_total_relation_size(%s))",
                (f"{args.schema}.task", f"{args.schema}.task_run"),
            ).fetchone()
        plans = explain_all(args.url, args.schema)
    finally:
        if not args.keep:
            with psycopg.connect(args.url, autocommit=True) as c:
                c.execute(drop)
    print(
        f"{rows:,} finished tasks, {args.backlog:,} queued (+2,050 queued/running, 20 paused "
        f"steps), loaded in "
        f"{seconds:.0f} s; task {sizes[0] if sizes else '?'}, task_run "
        f"{sizes[1] if sizes else '?'}; PostgreSQL {version[0] if version else '?'}\n"
    )
    print(table(plans))
    if args.json:
        args.json.write_text(json.dumps([vars(p) for p in plans], indent=2))
    bad = [f"{p.read} ({p.mode}): Seq Scan on {p.seq_big}" for p in plans if p.seq_big]
    for line in bad:
        print("FULL SCAN:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
