"""Raw-SQL ceilings with plain psycopg 3 and a minimal jobs table, measured in the same run.

The workloads follow the peers' ``bench_raw.py`` method (same table shape, same statements,
same sizes, clients as separate forked processes started together on a barrier), so the
ratios printed by ``run.py`` compare like with like:

  L1  one INSERT per job, autocommit (one commit per job), 1 client, 10,000 jobs
  L2  multi-row INSERT, 500 rows per statement, 1 client, 100,000 jobs
  L2x COPY in 500-row transactions, 1 client, 100,000 jobs
  L3  drain one job per round trip (claim 1 with SKIP LOCKED, then complete), 1 client, 20,000
  L4  drain in batches of 100 (claim 100, complete with one UPDATE), 2 clients, 100,000
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import harness as H
import psycopg
from psycopg.types.json import Jsonb

SCHEMA = """
CREATE TABLE jobs (
    id        bigserial PRIMARY KEY,
    queue     text        NOT NULL DEFAULT 'default',
    priority  smallint    NOT NULL DEFAULT 0,
    status    text        NOT NULL DEFAULT 'queued',
    payload   jsonb       NOT NULL DEFAULT '{}',
    run_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_fetch_idx ON jobs (queue, priority DESC, run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running_idx ON jobs (run_at) WHERE status = 'running';
"""

INSERT = "INSERT INTO jobs (queue, priority, payload) VALUES (%s, %s, %s)"
CLAIM = """
UPDATE jobs SET status = 'running'
WHERE id IN (SELECT id FROM jobs
             WHERE status = 'queued' AND queue = %s AND run_at <= now()
             ORDER BY priority DESC, run_at, id
             FOR UPDATE SKIP LOCKED
             LIMIT %s)
RETURNING id, payload
"""
COMPLETE_ONE = "UPDATE jobs SET status = 'done' WHERE id = %s"
COMPLETE_MANY = "UPDATE jobs SET status = 'done' WHERE id = ANY(%s)"


def _setup(url: str, prefill: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(SCHEMA)
        if prefill:
            c.execute(
                "INSERT INTO jobs (payload) SELECT jsonb_build_object('i', g) "
                "FROM generate_series(1, %s) AS g",
                (prefill,),
            )
            c.execute("VACUUM ANALYZE jobs")


# -------------------------------------------------------------------- client bodies


def insert_single(url: str, n: int, go: Any, out: Any) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.cursor()
        go.wait()
        for i in range(n):
            cur.execute(INSERT, ("default", 0, Jsonb({"i": i})), prepare=True)
    out.put(n)


def insert_multirow(url: str, n: int, go: Any, out: Any, batch: int = 500) -> None:
    values = ",".join(["(%s,%s,%s)"] * batch)  # placeholders only, no data
    stmt = "INSERT INTO jobs (queue, priority, payload) VALUES " + values  # noqa: S608
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.cursor()
        go.wait()
        for start in range(0, n, batch):
            params: list[Any] = []
            for i in range(start, start + batch):
                params += ["default", 0, Jsonb({"i": i})]
            cur.execute(stmt, params, prepare=True)  # type: ignore[arg-type]
    out.put(n)


def copy_rows(url: str, n: int, go: Any, out: Any, batch: int = 500) -> None:
    with psycopg.connect(url) as c:
        go.wait()
        for start in range(0, n, batch):
            with c.cursor().copy("COPY jobs (queue, priority, payload) FROM STDIN") as cp:
                for i in range(start, start + batch):
                    cp.write_row(("default", 0, json.dumps({"i": i})))
            c.commit()
    out.put(n)


def drain(url: str, n: int, go: Any, out: Any, batch: int = 1) -> None:
    done = 0
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.cursor()
        go.wait()
        while True:
            rows = cur.execute(CLAIM, ("default", batch), prepare=True).fetchall()
            if not rows:
                break
            if batch == 1:
                cur.execute(COMPLETE_ONE, (rows[0][0],), prepare=True)
            else:
                cur.execute(COMPLETE_MANY, ([r[0] for r in rows],), prepare=True)
            done += len(rows)
    out.put(done)


def _clients(
    url: str, target: Callable[..., None], clients: int, per_client: int, **kw: Any
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    go = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(url, per_client, go, out), kwargs=kw)
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    H.checkpoint()
    c0 = H.cpu_snapshot()
    go.wait()
    t0 = time.perf_counter()
    total = sum(out.get(timeout=600) for _ in procs)
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    time.sleep(0.3)  # let the closed connections' backends exit and be reaped
    c1 = H.cpu_snapshot()
    cpu = H.cpu_delta(c0, c1, total, wall=wall)
    return {"tasks_per_s": total / wall, "wall_s": round(wall, 3), "jobs": total, "cpu": cpu}


def workloads(quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    """name -> a function that measures it once on a fresh database."""
    s = 10 if quick else 1  # quick: a tenth of the sizes

    def make(
        target: Callable[..., None], clients: int, per_client: int, prefill: int = 0, **kw: Any
    ) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            url = H.fresh_db()
            _setup(url, prefill)
            return _clients(url, target, clients, per_client, **kw)

        return run

    return {
        "L1_insert_single_1client": make(insert_single, 1, 10_000 // s),
        "L2_insert_multirow500_1client": make(insert_multirow, 1, 100_000 // s),
        "L2x_copy500_1client": make(copy_rows, 1, 100_000 // s),
        "L3_drain_one_per_roundtrip_1client": make(drain, 1, 0, prefill=20_000 // s, batch=1),
        "L4_drain_batch100_2clients": make(drain, 2, 0, prefill=100_000 // s, batch=100),
    }


if __name__ == "__main__":  # ad hoc: python bench/raw.py
    for name, fn in workloads(quick=bool(os.environ.get("BENCH_QUICK"))).items():
        r = fn()
        print(f"{name}: {r['tasks_per_s']:,.0f}/s  {r['cpu']}")
    H.drop_db()
