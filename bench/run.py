"""hyrex-like benchmark harness (issue #4): every workload, plus the raw-SQL ceilings, in one run.

    python bench/run.py                 # every workload, 3 repetitions, table + JSON
    python bench/run.py --quick         # CI smoke run: small sizes, 1 repetition, < 2 min
    python bench/run.py --reps 5 --out DIR
    python bench/run.py --only send,drain_tuned --tuned 1   # some workloads; skip exploring
    python bench/run.py --scale         # 1,000,000 finished tasks: EXPLAIN + tuned drain on top
    python bench/run.py --memory        # RSS of parent and executors across a 200,000-task drain
    python bench/run.py --profile       # py-spy profile of a tuned drain (needs py-spy)

Every repetition runs on a freshly created database (``bench_hyrex_like``; see harness.py for
the BENCH_PG* knobs). Workers are real ``python -m hyrex_like run-worker bench_app:hy``
subprocesses. Numbers are medians over the repetitions with min-max; speed is never pass/fail.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")  # never start the embedded server here

import harness as H  # noqa: E402
import psycopg  # noqa: E402
import raw  # noqa: E402
from bench_app import Item, Stamp, flaky, hy, noop, stamp  # noqa: E402

from hyrex_like.logs import configure_logging  # noqa: E402

DEFAULT = {
    "label": "1 worker, defaults (--processes = CPU count, --prefetch 16, --log-level info)",
    "workers": 1,
    "args": [],
}
_QUIET = ["--log-level", "warning"]  # no per-task INFO line (as the peers' tuned runs)


def _tuned(workers: int, processes: int, prefetch: int) -> dict[str, Any]:
    each = " each" if workers > 1 else ""
    return {
        "label": f"{workers} worker{'s' if workers > 1 else ''}, --processes {processes} "
        f"--prefetch {prefetch} --log-level warning{each}",
        "workers": workers,
        "args": ["--processes", str(processes), "--prefetch", str(prefetch), *_QUIET],
    }


# (workers, processes per worker, prefetch)
TUNED_CANDIDATES = [
    _tuned(w, p, k)
    for w, p, k in ((1, 2, 512), (1, 2, 1024), (1, 2, 2048), (2, 1, 1024), (2, 2, 512))
]
WORKLOADS = ("send", "send_many", "drain_default", "drain_tuned", "drain_retry", "latency")
# the planning repo's shared/ sits beside this checkout
_SHARED_PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "results"
PEERS = Path(os.environ.get("BENCH_PEERS_RESULTS", str(_SHARED_PEERS)))


class Sizes:
    def __init__(self, quick: bool):
        q = quick
        self.send = 1_000 if q else 10_000
        self.send_many = 2_000 if q else 10_000
        self.drain = 2_000 if q else 20_000
        self.latency = 40 if q else 200
        self.cap_s = 60.0 if q else float(os.environ.get("BENCH_DRAIN_CAP_S", "240"))
        self.scale_rows = 20_000 if q else 1_000_000
        self.memory = 5_000 if q else 200_000


# ----------------------------------------------------------------------------- helpers


def app(url: str) -> None:
    """Point the bench app's registry at ``url`` and create the schema."""
    hy.configure(database_url=url)
    hy.migrate()


def prefill(url: str, n: int, task: Any = noop, start: int = 0) -> None:
    app(url)
    try:
        for k in range(start, start + n, 10_000):
            task.send_many([Item(i=i) for i in range(k, min(start + n, k + 10_000))])
    finally:
        hy.close()


def workers(cfg: dict[str, Any], url: str, tag: str) -> H.Workers:
    return H.Workers([H.Worker(cfg["args"], url, f"{tag}_{k}") for k in range(cfg["workers"])])


def outcome(url: str) -> dict[str, Any]:
    """Final task statuses and the number of recorded attempts (run rows) by status."""
    with psycopg.connect(url, autocommit=True) as c:
        tasks = dict(
            c.execute("SELECT status, count(*) FROM hyrex_like.task GROUP BY 1").fetchall()
        )
        runs = dict(
            c.execute("SELECT status, count(*) FROM hyrex_like.task_run GROUP BY 1").fetchall()
        )
    return {"tasks": tasks, "runs": runs}


def repeat(name: str, fn: Callable[[int], dict[str, Any]], reps: int) -> dict[str, Any]:
    runs = []
    for r in range(reps):
        H.log(f"{name} rep {r + 1}/{reps} ...")
        try:
            res = fn(r)
        except Exception as exc:  # keep going; the failure is recorded
            H.log(f"  {name} rep {r + 1} FAILED: {type(exc).__name__}: {exc}")
            res = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        runs.append(res)
        brief = {
            k: v
            for k, v in res.items()
            if k in ("tasks_per_s", "steady_tasks_per_s", "startup_s", "latency_ms", "partial")
        }
        H.log(f"  -> {json.dumps(brief, default=str)[:300]}")
    out: dict[str, Any] = {"runs": runs}
    if any("tasks_per_s" in r for r in runs):
        out["tasks_per_s"] = H.summarize(r.get("tasks_per_s") for r in runs)
        out["steady_tasks_per_s"] = H.summarize(r.get("steady_tasks_per_s") for r in runs)
        out["startup_s"] = H.summarize(r.get("startup_s") for r in runs)
        ok = [r for r in runs if "tasks_per_s" in r]
        if ok:
            med = sorted(ok, key=lambda r: r["tasks_per_s"])[(len(ok) - 1) // 2]
            out["median_run_cpu"] = med.get("cpu")
    if any("latency_ms" in r for r in runs):
        out["latency_ms"] = {
            k: H.summarize(r["latency_ms"][k] for r in runs if "latency_ms" in r)
            for k in ("p50", "p95", "p99", "max")
        }
    return out


# --------------------------------------------------------------------------- workloads


def w_send(n: int) -> Callable[[int], dict[str, Any]]:
    def run(rep: int) -> dict[str, Any]:
        url = H.fresh_db()
        app(url)
        try:
            noop.send(Item(i=-1))  # opens the pool and prepares the statement: not timed
            H.checkpoint()
            c0 = H.cpu_snapshot()
            t0 = time.perf_counter()
            for i in range(n):
                noop.send(Item(i=i))
            wall = time.perf_counter() - t0
            c1 = H.cpu_snapshot()
        finally:
            hy.close()
        got = H.scalar(url, "SELECT count(*) FROM hyrex_like.task")
        assert got == n + 1, f"expected {n + 1} rows, found {got}"
        return {
            "tasks_per_s": n / wall,
            "wall_s": round(wall, 3),
            "cpu": H.cpu_delta(c0, c1, n, wall),
        }

    return run


def w_send_many(n: int) -> Callable[[int], dict[str, Any]]:
    def run(rep: int) -> dict[str, Any]:
        url = H.fresh_db()
        app(url)
        try:
            noop.send(Item(i=-1))  # warm the pool: not timed
            H.checkpoint()
            c0 = H.cpu_snapshot()
            t0 = time.perf_counter()
            noop.send_many([Item(i=i) for i in range(n)])  # one call, one COPY
            wall = time.perf_counter() - t0
            c1 = H.cpu_snapshot()
        finally:
            hy.close()
        got = H.scalar(url, "SELECT count(*) FROM hyrex_like.task")
        assert got == n + 1, f"expected {n + 1} rows, found {got}"
        return {
            "tasks_per_s": n / wall,
            "wall_s": round(wall, 3),
            "cpu": H.cpu_delta(c0, c1, n, wall),
        }

    return run


def w_drain(
    cfg: dict[str, Any],
    n: int,
    cap_s: float,
    tag: str,
    task: Any = noop,
    expect_runs: int | None = None,
) -> Callable[[int], dict[str, Any]]:
    def run(rep: int) -> dict[str, Any]:
        url = H.fresh_db()
        prefill(url, n, task)
        res = H.measure_drain(url, n, workers(cfg, url, tag), cap_s)
        res["outcome"] = outcome(url)
        res["settings"] = cfg["label"]
        if not res.get("partial"):
            done = res["outcome"]["tasks"].get("completed", 0)
            runs = sum(res["outcome"]["runs"].values())
            want = expect_runs if expect_runs is not None else n
            assert done == n, f"{done} of {n} tasks completed: {res['outcome']}"
            assert runs == want, f"{runs} run rows recorded, expected {want}: {res['outcome']}"
        return res

    return run


def w_explore(candidates: list[int], n: int, cap_s: float) -> dict[str, Any]:
    out = {}
    for idx in candidates:
        cfg = TUNED_CANDIDATES[idx]
        H.log(f"explore [{idx}] {cfg['label']} ...")
        try:
            r = w_drain(cfg, n, cap_s, f"explore{idx}")(0)
        except Exception as exc:
            H.log(f"  FAILED: {exc}")
            continue
        out[str(idx)] = {
            "label": cfg["label"],
            "tasks_per_s": round(r["tasks_per_s"], 1),
            "steady_tasks_per_s": r.get("steady_tasks_per_s"),
            "startup_s": r.get("startup_s"),
            "partial": r.get("partial", False),
        }
        H.log(f"  -> {r['tasks_per_s']:.0f}/s (steady {r.get('steady_tasks_per_s')})")
    return out


def w_latency(cfg: dict[str, Any], n: int, tag: str) -> Callable[[int], dict[str, Any]]:
    def run(rep: int) -> dict[str, Any]:
        url = H.fresh_db()
        app(url)
        path = H.SCRATCH / f"latency_{tag}_{rep}.txt"
        warm = H.SCRATCH / f"latency_{tag}_warm.txt"
        path.unlink(missing_ok=True)
        warm.unlink(missing_ok=True)
        ws = workers(cfg, url, tag)

        def send(i: int, t: float, p: Path = path) -> None:
            stamp.send(Stamp(seq=i, t_enqueue=t, path=str(p)))

        ws.start()
        try:
            time.sleep(1.0)
            send(0, time.time(), warm)
            H.read_stamps(warm, 1, 60, ws)
            time.sleep(1.0)
            H.paced(n, 0.05, send)
            lat = H.read_stamps(path, n, 120, ws)
        finally:
            ws.stop()
            hy.close()
        return {"latency_ms": H.latency_summary(lat), "settings": cfg["label"]}

    return run


# ------------------------------------------------------------------------ scale / memory


FINISHED_SQL = """
INSERT INTO hyrex_like.task (id, task_name, queue, priority, status, args, attempt_count,
                             run_after, created_at, started_at, finished_at, result)
SELECT gen_random_uuid(), 'noop', 'default', 5, 'completed', jsonb_build_object('i', g), 1,
       now() - interval '2 days' + g * interval '10 ms', now() - interval '2 days',
       now() - interval '2 days' + g * interval '10 ms',
       now() - interval '2 days' + g * interval '10 ms', 'null'::jsonb
FROM generate_series(1, %(n)s) AS g
"""
FINISHED_RUNS_SQL = """
INSERT INTO hyrex_like.task_run (task_id, attempt_number, status, worker_id, started_at,
                                 finished_at, result)
SELECT id, 1, 'completed', NULL, started_at, finished_at, 'null'::jsonb
FROM hyrex_like.task WHERE status = 'completed'
"""


def explain_claim(url: str, limit: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the worker's claim statement, rolled back."""
    from hyrex_like.db import WORKER_PLANNER_OPTIONS, q

    params = {
        "worker_id": uuid.uuid4(),
        "task_names": ["noop"],
        "queues": [],
        "limit": limit,
        "now": None,
    }
    with psycopg.connect(url, options="-c search_path=hyrex_like " + WORKER_PLANNER_OPTIONS) as c:
        cur = psycopg.ClientCursor(c)
        rows = cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + q("claim_tasks"), params).fetchall()
        c.rollback()
    return "\n".join(r[0] for r in rows)


def explain_finish(url: str, limit: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the worker's finish statement for ``limit`` claimed tasks,
    all inside one rolled-back transaction."""
    from hyrex_like.db import WORKER_PLANNER_OPTIONS, FinishedRow, WorkerQueries, q

    wid = uuid.uuid4()
    # the worker's own session settings (see hyrex_like.db.WORKER_PLANNER_OPTIONS)
    with psycopg.connect(url, options="-c search_path=hyrex_like " + WORKER_PLANNER_OPTIONS) as c:
        rows, _, _ = WorkerQueries.claim(c, wid, ["noop"], [], limit)
        now = time.time()
        done = [
            FinishedRow(
                r.task_id,
                r.task_name,
                r.attempt,
                "completed",
                True,
                "null",
                None,
                None,
                None,
                now,
                now,
            )
            for r in rows
        ]
        params = WorkerQueries.finish_params(wid, done)
        cur = psycopg.ClientCursor(c)
        plan = cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + q("finish_runs"), params).fetchall()
        c.rollback()
    return "\n".join(r[0] for r in plan)


def w_scale(sizes: Sizes, reps: int, cfg: dict[str, Any]) -> dict[str, Any]:
    n, big = sizes.drain, sizes.scale_rows
    H.log(f"scale: tuned drain of {n} on an empty table, {reps} reps")
    empty = repeat("scale_empty", w_drain(cfg, n, sizes.cap_s, "scale_empty"), reps)
    url = H.fresh_db()
    app(url)
    hy.close()
    H.log(f"scale: inserting {big:,} finished tasks and their run rows ...")
    t0 = time.monotonic()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(FINISHED_SQL, {"n": big})
        c.execute(FINISHED_RUNS_SQL)
        c.execute("VACUUM ANALYZE hyrex_like.task")
        c.execute("VACUUM ANALYZE hyrex_like.task_run")
        size = c.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('hyrex_like.task')), "
            "pg_size_pretty(pg_total_relation_size('hyrex_like.task_run'))"
        ).fetchone()
    setup_s = round(time.monotonic() - t0, 1)
    plan_idle = explain_claim(url, 256)
    runs = []
    plan_loaded = plan_finish = ""
    for rep in range(reps):
        prefill(url, n, start=big + rep * n + 1_000_000_000)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("VACUUM ANALYZE hyrex_like.task")
        if rep == 0:
            plan_loaded = explain_claim(url, 256)
            plan_finish = explain_finish(url, 256)
        H.log(f"scale_1M rep {rep + 1}/{reps} ...")
        res = H.measure_drain(url, n, workers(cfg, url, f"scale_big{rep}"), sizes.cap_s)
        res["settings"] = cfg["label"]
        H.log(f"  -> {res['tasks_per_s']:.0f}/s (steady {res.get('steady_tasks_per_s')})")
        runs.append(res)
    total = H.scalar(url, "SELECT count(*) FROM hyrex_like.task")
    big_sum = H.summarize(r["tasks_per_s"] for r in runs)
    e, b = empty["tasks_per_s"]["median"], big_sum["median"]
    return {
        "finished_rows": big,
        "setup_s": setup_s,
        "table_sizes": size,
        "rows_at_end": total,
        "explain_no_queued": plan_idle,
        "explain_with_queued": plan_loaded,
        "explain_finish_with_queued": plan_finish,
        "uses_task_claim_idx": "task_claim_idx" in plan_idle and "task_claim_idx" in plan_loaded,
        "empty": empty,
        "big": {"runs": runs, "tasks_per_s": big_sum},
        "ratio_big_to_empty": round(b / e, 3) if e and b else None,
        "settings": cfg["label"],
    }


def w_memory(sizes: Sizes, cfg: dict[str, Any]) -> dict[str, Any]:
    n = sizes.memory
    url = H.fresh_db()
    H.log(f"memory: queueing {n:,} tasks ...")
    prefill(url, n)
    ws = workers(cfg, url, "memory")
    holder: dict[str, H.MemorySampler] = {}

    def sample() -> None:
        if "s" not in holder:
            holder["s"] = H.MemorySampler(ws.workers[0].pid, 0.5).start()

    H.log("memory: draining ...")
    try:
        res = H.measure_drain(url, n, ws, max(sizes.cap_s, 900.0), on_sample=sample)
    finally:
        if "s" in holder:
            holder["s"].stop()
    if "s" not in holder:
        raise RuntimeError("the drain ended before the first memory sample")
    sampler = holder["s"]
    startup = res.get("startup_s") or 0.0
    res["memory"] = sampler.report(skip_s=startup)  # "start" = once tasks are flowing
    series = []
    step = max(1, len(sampler.samples) // 20)
    for t, snap in sampler.samples[::step]:
        execs = [v.get("VmRSS", 0) for k, v in snap.items() if k != "parent" and v]
        series.append(
            {
                "t_s": round(t, 1),
                "parent_mib": round(snap["parent"].get("VmRSS", 0) / 1024, 1),
                "executors_mib": [round(x / 1024, 1) for x in execs],
            }
        )
    res["rss_series"] = series
    res["outcome"] = outcome(url)
    res["settings"] = cfg["label"]
    return res


# ------------------------------------------------------------------------------- output


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def cell(s: dict[str, Any] | None, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def cpu_cell(cpu: dict[str, Any] | None, python_key: str) -> str:
    if not cpu:
        return ""
    return (
        f"py {fmt(cpu.get(python_key + '_us_per_task'))} / pg "
        f"{fmt(cpu.get('pg_us_per_task'))} µs; py {cpu.get(python_key + '_cores')} / "
        f"pg {cpu.get('pg_cores')} cores; box {cpu.get('machine_busy_pct')}%"
    )


def peer_figures() -> dict[str, Any]:
    try:
        d = json.loads((PEERS / "pgqueuer.json").read_text())["workloads"]
    except (OSError, ValueError, KeyError):
        return {}

    def med(key: str, sub: str = "jobs_per_s") -> Any:
        return (d.get(key, {}).get(sub) or {}).get("median")

    return {
        "send": med("W1_enqueue_single"),
        "send_many": med("W1b_enqueue_bulk"),
        "drain_default": med("W2a_drain_default"),
        "drain_tuned": med("W2b_drain_tuned"),
        "latency_p50": ((d.get("W3_latency", {}).get("latency_ms") or {}).get("p50") or {}).get(
            "median"
        ),
    }


RATIOS = {  # our workload -> (ceiling, what the ceiling is)
    "send": ("L1_insert_single_1client", "raw single INSERT, 1 client"),
    "send_many": ("L2x_copy500_1client", "raw COPY 500/txn"),
    "drain_default": ("L3_drain_one_per_roundtrip_1client", "raw one job per round trip"),
    "drain_tuned": ("L4_drain_batch100_2clients", "raw batch 100, 2 clients"),
    "drain_retry": ("L4_drain_batch100_2clients", "raw batch 100, 2 clients"),
}
TITLES = {
    "send": "send, one call per task (tasks/s)",
    "send_many": "send_many, one call (tasks/s)",
    "drain_default": "drain, default worker (tasks/s)",
    "drain_tuned": "drain, tuned (tasks/s)",
    "drain_retry": "drain, 10% fail once + retry (tasks/s)",
}


def table(result: dict[str, Any]) -> str:
    W, L = result["workloads"], result["ceilings"]
    peer = result.get("peer_pgqueuer_last_run", {})
    lines = [
        "| workload | hyrex-like median (min–max) | raw ceiling (same run) | ratio | "
        "pgqueuer (peers' run) | CPU per task, cores (median run) |",
        "|---|---|---|---|---|---|",
    ]
    for key, title in TITLES.items():
        if key not in W:
            continue
        w = W[key]
        ceil_name, ceil_what = RATIOS[key]
        c = L.get(ceil_name, {}).get("tasks_per_s")
        ratio = result["ratios"].get(key)
        party = "bench" if key.startswith("send") else "worker"
        lines.append(
            f"| {title} | {cell(w.get('tasks_per_s'))} | "
            f"{cell(c)} {ceil_what} | {f'{ratio:.2f}×' if ratio else 'n/a'} | "
            f"{fmt(peer.get(key))} | "
            f"{cpu_cell(w.get('median_run_cpu'), party)} |"
        )
        if key.startswith("drain"):
            lines.append(
                f"| … steady state, excl. start-up | {cell(w.get('steady_tasks_per_s'))}"
                f" | | | | start-up {cell(w.get('startup_s'), 2)} s |"
            )
    if "latency" in W:
        lat = W["latency"].get("latency_ms", {})
        for p in ("p50", "p95", "p99", "max"):
            pv = peer.get("latency_p50") if p == "p50" else None
            lines.append(
                f"| enqueue-to-start latency {p}, idle default worker (ms) | "
                f"{cell(lat.get(p), 1)} | | | {fmt(pv, 1) if pv else ''} | |"
            )
    lines.append("")
    lines.append("Raw ceilings measured in this run (plain psycopg, minimal table):")
    lines.append("")
    lines.append("| ceiling | tasks/s median (min–max) | CPU per task |")
    lines.append("|---|---|---|")
    for name, v in L.items():
        lines.append(
            f"| {name} | {cell(v.get('tasks_per_s'))} | "
            f"{cpu_cell(v.get('median_run_cpu'), 'bench_children')} |"
        )
    if "drain_explore" in W:
        lines.append("")
        lines.append(
            "Tuned-drain candidates (1 run each): "
            + "; ".join(
                f"[{k}] {v['label']}: {fmt(v['tasks_per_s'])}/s "
                f"(steady {fmt(v['steady_tasks_per_s'])})"
                for k, v in W["drain_explore"].items()
            )
        )
        lines.append(f"Chosen: {W.get('drain_tuned', {}).get('settings', '?')}")
    return "\n".join(lines)


def source_info() -> dict[str, str]:
    """Which library code was measured: git HEAD, whether the tree is dirty, a source hash."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for p in sorted((root / "hyrex_like").glob("*.*")) + sorted((root / "sql").glob("*.sql")):
        digest.update(p.read_bytes())
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "hyrex_like", "sql"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except OSError:
        head, dirty = "?", ""
    return {
        "git_head": head,
        "library_dirty": str(bool(dirty.strip())),
        "library_sha256": digest.hexdigest()[:16],
    }


def precompile() -> None:
    """Write the bytecode of the library and the bench app before any worker starts.

    The library is usually installed editable here, so pip compiled none of it, and where
    ``PYTHONDONTWRITEBYTECODE`` is set (this machine sets it) every worker launch compiled
    our modules from source again: ~40 ms of each start, ~5 % of a 20k-task tuned drain.
    The peers' packages were compiled by pip when their venvs were built; an installed
    hyrex-like is too. ``compileall`` writes the caches whatever that variable says.
    """
    import compileall

    import hyrex_like

    for folder in (Path(hyrex_like.__file__).parent, Path(__file__).resolve().parent):
        compileall.compile_dir(folder, maxlevels=0, quiet=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repetition")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick: 1)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(WORKLOADS)},raw")
    ap.add_argument(
        "--tuned",
        type=int,
        default=None,
        help="index into TUNED_CANDIDATES to use without exploring",
    )
    ap.add_argument("--explore", default=None, help="comma list of candidate indexes to try")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw-SQL ceilings")
    ap.add_argument("--scale", action="store_true", help="the 1M-finished-rows check only")
    ap.add_argument("--memory", action="store_true", help="the 200k-drain memory check only")
    ap.add_argument("--profile", action="store_true", help="py-spy profile of a tuned drain only")
    args = ap.parse_args(argv)
    configure_logging("warning")  # the bench client's own library logs (schema_migrated...)
    precompile()
    reps = args.reps or (1 if args.quick else 3)
    sizes = Sizes(args.quick)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    tuned_idx = args.tuned if args.tuned is not None else 1

    def want(k: str) -> bool:
        return not only or k in only

    result: dict[str, Any] = {
        "env": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "postgres": H.server_version(),
            "psycopg": version("psycopg"),
            "pydantic": version("pydantic"),
            "hyrex_like": version("hyrex-like"),
            "loadavg_at_start": os.getloadavg(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **source_info(),
        },
        "args": {"quick": args.quick, "reps": reps, "only": sorted(only), "sizes": vars(sizes)},
        "workloads": {},
        "ceilings": {},
        "ratios": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp_ = time.strftime("%Y%m%d-%H%M%S")
    t_start = time.monotonic()
    try:
        if args.scale or args.memory or args.profile:
            cfg = TUNED_CANDIDATES[tuned_idx]
            if args.scale:
                result["scale"] = w_scale(sizes, reps, cfg)
                s = result["scale"]
                print(f"claim query uses task_claim_idx: {s['uses_task_claim_idx']}")
                print(s["explain_with_queued"])
                print(s["explain_finish_with_queued"])
                print(
                    f"tuned drain, empty table: {cell(s['empty']['tasks_per_s'])}/s; with "
                    f"{s['finished_rows']:,} finished rows: {cell(s['big']['tasks_per_s'])}/s;"
                    f" ratio {s['ratio_big_to_empty']}"
                )
            if args.memory:
                result["memory"] = w_memory(sizes, cfg)
                m = result["memory"]
                print(f"memory: {sizes.memory:,} tasks at {m['tasks_per_s']:.0f}/s")
                for name, v in m["memory"].items():
                    print(
                        f"  {name}: start {v['start_mib']} MiB, end {v['end_mib']} MiB, "
                        f"peak {v['peak_mib']} MiB (VmHWM {v['hwm_mib']} MiB)"
                    )
            if args.profile:
                import profile_drain

                result["profile"] = profile_drain.run(sizes, cfg, args.out, stamp_)
            name = "scale" if args.scale else "memory" if args.memory else "profile"
            path = args.out / f"{name}-{stamp_}.json"
            path.write_text(json.dumps(result, indent=2, default=str))
            print(f"wrote {path}")
            return 0

        W = result["workloads"]
        if want("raw") and not args.no_raw:
            for name, fn in raw.workloads(args.quick).items():
                result["ceilings"][name] = repeat(name, lambda rep, fn=fn: fn(), reps)
        if want("send"):
            W["send"] = repeat("send", w_send(sizes.send), reps)
            W["send"]["api"] = "noop.send(Item(i=i)) per task, pooled connection"
        if want("send_many"):
            W["send_many"] = repeat("send_many", w_send_many(sizes.send_many), reps)
            W["send_many"]["api"] = (
                f"noop.send_many([Item(i=i) ...]), {sizes.send_many:,} in one call"
            )
        if want("drain_default"):
            W["drain_default"] = repeat(
                "drain_default", w_drain(DEFAULT, sizes.drain, sizes.cap_s, "default"), reps
            )
            W["drain_default"]["settings"] = DEFAULT["label"]
        if want("drain_tuned"):
            if args.tuned is None:
                pick = (
                    [int(x) for x in args.explore.split(",")]
                    if args.explore
                    else [0, 1]
                    if args.quick
                    else list(range(len(TUNED_CANDIDATES)))
                )
                W["drain_explore"] = w_explore(pick, sizes.drain, sizes.cap_s)
                if W["drain_explore"]:
                    tuned_idx = int(
                        max(W["drain_explore"].items(), key=lambda kv: kv[1]["tasks_per_s"])[0]
                    )
            cfg = TUNED_CANDIDATES[tuned_idx]
            W["drain_tuned"] = repeat(
                "drain_tuned", w_drain(cfg, sizes.drain, sizes.cap_s, "tuned"), reps
            )
            W["drain_tuned"]["settings"] = cfg["label"]
        if want("drain_retry"):
            cfg = TUNED_CANDIDATES[tuned_idx]
            W["drain_retry"] = repeat(
                "drain_retry",
                w_drain(
                    cfg,
                    sizes.drain,
                    sizes.cap_s,
                    "retry",
                    task=flaky,
                    expect_runs=sizes.drain + sizes.drain // 10,
                ),
                reps,
            )
            W["drain_retry"]["settings"] = (
                cfg["label"] + "; flaky: max_retries=1, retry_backoff=0, every 10th task fails once"
            )
        if want("latency"):
            W["latency"] = repeat("latency", w_latency(DEFAULT, sizes.latency, "latency"), reps)
            W["latency"]["settings"] = (
                f"idle default worker, warmed up; {sizes.latency} tasks sent 50 ms apart"
            )
        for key, (ceil_name, _) in RATIOS.items():
            ours = (W.get(key, {}).get("tasks_per_s") or {}).get("median")
            ceiling = (result["ceilings"].get(ceil_name, {}).get("tasks_per_s") or {}).get("median")
            if ours and ceiling:
                result["ratios"][key] = round(ours / ceiling, 3)
        result["peer_pgqueuer_last_run"] = peer_figures()
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
        text = table(result)
        result["table_md"] = text
        path = args.out / f"run-{'quick-' if args.quick else ''}{stamp_}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        print(text)
        print(f"\n{result['elapsed_s']} s; wrote {path}")
        failed = [
            k
            for k, v in {**W, **result["ceilings"]}.items()
            if isinstance(v, dict) and any("error" in r for r in v.get("runs", []))
        ]
        if failed:
            print(f"FAILED workloads: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    finally:
        hy.close()
        H.drop_db()


if __name__ == "__main__":
    sys.exit(main())
