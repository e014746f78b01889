"""Benchmarks of workflows (issue #16): the step-to-step hand-off's latency, a drain of
three-step workflows against the same number of plain tasks, and what the hand-off trigger
costs plain tasks.

    python bench/workflows.py                       # all three, full sizes, table + JSON + md
    python bench/workflows.py --only latency        # latency, throughput, trigger
    python bench/workflows.py --quick               # CI smoke (~20 s): small sizes, 1 round
    python bench/workflows.py --only trigger --before /tmp/wt-before [--after ROOT]
    python bench/workflows.py --generic-plans       # experiment: the hand-off's functions
                                                    # ALTERed to force_generic_plan (bench db)

latency: one idle default worker runs ``wf_app:three`` (s1 >> s2 >> s3); workflows are sent one
at a time, each after the previous one completed. For each hand-off, from the row times: the
previous step's ``task.finished_at`` (the executor's clock as the body ended, written by the
worker) to the next step's ``task.created_at`` (the server's now() in the transaction that
recorded the finish: the trigger queued it), its run's ``claimed_at`` (the server's now() in the
claim) and its run's ``started_at`` (the executor's clock as the body began). One host, one
clock: the executor's time.time() and the server's now() read the same CLOCK_REALTIME. Also the
workflow end to end: ``workflow.finished_at - created_at`` (server clock, send to last step's
finish recorded) and as the sender saw it (send to a poll, every 2 ms, finding it completed).

throughput: 2,000 workflows (--quick: 200) sent first, then one worker started with the tuned
options bench/run.py uses (TUNED_CANDIDATES[1]); against 6,000 plain tasks (2,000 each of the
same three tasks) sent first, then the same worker. Interleaved rounds, medians; the ratio is
workflow / plain time (goal within 1.5x). ``wall`` includes the worker's start; ``drain`` is
the rows' first claim to their last finish (the worker's start left out).

trigger: the same plain drain (bench_app:noop, 6,000, tuned worker) on two source trees, e.g.
the commit before the workflow schema (``git worktree add /tmp/wt-before c9c8608``) and this
one, each with its own library on PYTHONPATH and its own database; interleaved, medians, the
ratio after / before. Skipped when --before is not given (or not a checkout). (wf_trees.py)

Same database knobs as run.py (harness.py: BENCH_PG*); every round uses a fresh database.
Speed is never pass/fail; a workflow or task that does not complete makes the command exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")  # never start the embedded server here
# its own database, so it can run beside run.py's or lifecycle.py's (bench_hyrex_like)
os.environ.setdefault("BENCH_DB", "bench_hyrex_like_wf")

import harness as H  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from run import outcome, source_info  # noqa: E402
from wf_app import Item, hy, s1, s2, s3, three  # noqa: E402
from wf_trees import TUNED, check_tree, drain_timing, ratios, w_trigger  # noqa: E402

from hyrex_like.logs import configure_logging  # noqa: E402

WORKLOADS = ("latency", "throughput", "trigger")
APP = "wf_app:hy"
ROOT = Path(__file__).resolve().parent.parent
WARMUP = 3  # workflows run (and left out) before the latency is measured


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.latency = 30 if quick else 300
        self.workflows = 200 if quick else 2_000
        self.plain_trigger = 6_000
        self.rounds = 1 if quick else 3
        self.cap_s = 120.0 if quick else 600.0


def _worker(args: list[str], url: str, tag: str) -> H.Worker:
    w = H.Worker(args, url, tag)
    w.argv[w.argv.index("bench_app:hy")] = APP
    return w


GENERIC_PLANS = False  # --generic-plans: an experiment on the bench database only


def _app(url: str) -> None:
    hy.configure(database_url=url)
    hy.migrate()
    if GENERIC_PLANS:  # see --generic-plans
        with psycopg.connect(url, autocommit=True) as c:
            for fn in ("workflow_start_ready", "workflow_step_changed"):
                c.execute(
                    sql.SQL(
                        "ALTER FUNCTION hyrex_like.{} SET plan_cache_mode = force_generic_plan"
                    ).format(sql.Identifier(fn))
                )


def _rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(query, params).fetchall()


# ---------------------------------------------------------------------------- latency

STATE_SQL = (
    "SELECT w.state, EXISTS (SELECT 1 FROM hyrex_like.task AS t WHERE t.workflow_id = w.id "
    "AND t.status IN ('failed', 'canceled')) FROM hyrex_like.workflow AS w WHERE w.id = %s"
)
STEPS_SQL = (
    "SELECT t.workflow_id, t.workflow_step, t.created_at, t.finished_at, r.claimed_at, "
    "r.started_at FROM hyrex_like.task AS t JOIN hyrex_like.task_run AS r "
    "ON r.task_id = t.id AND r.attempt_number = 1 "
    "WHERE t.workflow_id = ANY(%s) ORDER BY t.workflow_id, t.workflow_step"
)
PLAIN_SQL = (
    "SELECT t.status, t.created_at, r.claimed_at, r.started_at FROM hyrex_like.task AS t "
    "LEFT JOIN hyrex_like.task_run AS r ON r.task_id = t.id AND r.attempt_number = 1 "
    "WHERE t.id = %s"
)
WORKFLOWS_SQL = "SELECT id, created_at, finished_at FROM hyrex_like.workflow WHERE id = ANY(%s)"


def _run_one(conn: psycopg.Connection[Any], i: int, ws: H.Workers) -> tuple[Any, float]:
    t0 = time.perf_counter()
    wid = three.send(Item(i=i)).id
    deadline = t0 + 30.0
    while True:
        row = conn.execute(STATE_SQL, (wid,)).fetchone()
        if row and row[0] == "completed":
            return wid, time.perf_counter() - t0
        if row and row[1]:
            raise RuntimeError(f"workflow {wid} has a failed or canceled step")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"workflow {wid} not completed after 30 s:\n{ws.tail()}")
        if not ws.alive():
            raise RuntimeError(f"the worker exited:\n{ws.tail()}")
        time.sleep(0.002)


def _plain_one(conn: psycopg.Connection[Any], i: int, ws: H.Workers) -> tuple[float, float]:
    """A plain task sent to the idle worker: (sent -> claimed, sent -> started), row times."""
    tid = s1.send(Item(i=i)).id
    deadline = time.perf_counter() + 30.0
    while True:
        row = conn.execute(PLAIN_SQL, (tid,)).fetchone()
        if row and row[0] == "completed":
            return (row[2] - row[1]).total_seconds(), (row[3] - row[1]).total_seconds()
        if time.perf_counter() > deadline or not ws.alive():
            raise RuntimeError(f"task {tid} not completed:\n{ws.tail()}")
        time.sleep(0.002)


def _lat(seconds: list[float]) -> dict[str, Any]:
    out = H.latency_summary(seconds)
    out["p90"] = round(H.pct([x * 1000 for x in seconds], 90), 2)
    return out


def w_latency(sizes: Sizes, rnd: int) -> dict[str, Any]:
    """Workflows one at a time through an idle default worker; hand-off times from the rows."""
    url = H.fresh_db()
    _app(url)
    ws = H.Workers([_worker([], url, f"wf_latency{rnd}")])
    ws.start()
    ids, client, plain = [], [], []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(WARMUP):
                _run_one(conn, -1 - i, ws)
            for i in range(sizes.latency):
                wid, seconds = _run_one(conn, i, ws)
                ids.append(wid)
                client.append(seconds)
            for i in range(sizes.latency):  # the same worker's wake-up for a plain send
                plain.append(_plain_one(conn, i, ws))
    finally:
        ws.stop()
        hy.close()
    steps: dict[Any, list[tuple[Any, ...]]] = {}
    for row in _rows(url, STEPS_SQL, (ids,)):
        steps.setdefault(row[0], []).append(row)
    queued, claimed, started = [], [], []
    for rows in steps.values():
        assert [r[1] for r in rows] == [0, 1, 2], f"steps {[r[1] for r in rows]}"
        for prev, nxt in zip(rows, rows[1:], strict=False):
            finished = prev[3]
            queued.append((nxt[2] - finished).total_seconds())
            claimed.append((nxt[4] - finished).total_seconds())
            started.append((nxt[5] - finished).total_seconds())
    server = [(f - c).total_seconds() for _, c, f in _rows(url, WORKFLOWS_SQL, (ids,))]
    return {
        "workflows": len(ids),
        "handoffs": len(claimed),
        "finished_to_queued_ms": _lat(queued),
        "finished_to_claimed_ms": _lat(claimed),
        "finished_to_started_ms": _lat(started),
        "end_to_end_server_ms": _lat(server),
        "end_to_end_client_ms": _lat(client),
        "plain_sent_to_claimed_ms": _lat([p[0] for p in plain]),
        "plain_sent_to_started_ms": _lat([p[1] for p in plain]),
        "outcome": outcome(url),
    }


# ------------------------------------------------------------------------- throughput


def _send_plain(n: int) -> None:
    for task in (s1, s2, s3):
        for k in range(0, n, 10_000):
            task.send_many([Item(i=i) for i in range(k, min(n, k + 10_000))])


def _throughput_one(kind: str, n: int, cap_s: float, rnd: int) -> dict[str, Any]:
    url = H.fresh_db()
    _app(url)
    t0 = time.perf_counter()
    try:
        if kind == "workflow":
            for i in range(n):
                three.send(Item(i=i))
        else:
            _send_plain(n)
    finally:
        hy.close()
    sent_s = time.perf_counter() - t0
    ws = H.Workers([_worker(TUNED["args"], url, f"wf_{kind}{rnd}")])
    # the poll counts unfinished tasks: a workflow's next step is queued in the transaction
    # that finishes the previous one, so the count reaches 0 only when every step has run
    first = n if kind == "workflow" else 3 * n  # what is queued when the worker starts
    res = drain_timing(url, H.measure_drain(url, first, ws, cap_s), 3 * n)
    res["send_s"] = round(sent_s, 3)
    res["outcome"] = outcome(url)
    done = res["outcome"]["tasks"].get("completed", 0)
    assert res["partial"] or done == 3 * n, f"{done} of {3 * n} tasks completed: {res['outcome']}"
    if kind == "workflow":
        wf_done = H.scalar(
            url, "SELECT count(*) FROM hyrex_like.workflow WHERE state = 'completed'"
        )
        assert res["partial"] or wf_done == n, f"{wf_done} of {n} workflows completed"
    return res


def w_throughput(sizes: Sizes) -> dict[str, Any]:
    """Interleaved rounds, the order swapped each round: plain, workflow; workflow, plain ..."""
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "workflow": []}
    for rnd in range(sizes.rounds):
        order = ("plain", "workflow") if rnd % 2 == 0 else ("workflow", "plain")
        for kind in order:
            res = _throughput_one(kind, sizes.workflows, sizes.cap_s, rnd)
            H.log(f"  {kind} round {rnd + 1}: wall {res['wall_s']} s, drain {res['drain_s']} s")
            runs[kind].append(res)
    return {
        "workflows": sizes.workflows,
        "tasks": 3 * sizes.workflows,
        "settings": TUNED["label"],
        "runs": runs,
        **ratios(runs["workflow"], runs["plain"]),
    }


# ----------------------------------------------------------------------------- report


def _cell(values: list[float], digits: int = 3) -> str:
    s = H.summarize(values)
    if not s["n"]:
        return "- | -"
    return f"{s['median']:.{digits}f} | {s['min']:.{digits}f} - {s['max']:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    lines = ["| measure | median | range | goal |", "|---|---|---|---|"]
    w = result["workloads"]
    for r in w.get("latency", []):
        lines.append(f"| latency: {r['workflows']} workflows, {r['handoffs']} hand-offs | | | |")
        for key, label, goal in (
            ("finished_to_queued_ms", "finished -> next queued (ms)", ""),
            ("finished_to_claimed_ms", "finished -> next claimed (ms)", "p50 < 5"),
            ("finished_to_started_ms", "finished -> next started (ms)", ""),
            ("end_to_end_server_ms", "workflow end to end, server (ms)", ""),
            ("end_to_end_client_ms", "workflow end to end, sender (ms)", ""),
            ("plain_sent_to_claimed_ms", "plain task: sent -> claimed (ms)", ""),
            ("plain_sent_to_started_ms", "plain task: sent -> started (ms)", ""),
        ):
            s = r[key]
            lines.append(
                f"| {label} p50 / p90 / p99 / max | {s['p50']:.2f} / {s['p90']:.2f} / "
                f"{s['p99']:.2f} / {s['max']:.2f} | min {s['min']:.2f} | {goal} |"
            )
    for key, label, num, den, goal in (
        ("throughput", "drain", "workflow", "plain", "<= 1.5"),
        ("trigger", "plain drain", "after", "before", "~1.00"),
    ):
        if key not in w:
            continue
        d = w[key]
        n = d["tasks"]
        for kind in (den, num):
            runs = d["runs"][kind]
            for m in ("wall_s", "drain_s"):
                lines.append(
                    f"| {label} {n:,} tasks, {kind}: {m} | {_cell([x[m] for x in runs])} | |"
                )
        lines.append(f"| ratio {num} / {den}, wall | {_cell(d['ratios_wall'])} | {goal} |")
        lines.append(f"| ratio {num} / {den}, drain | {_cell(d['ratios_drain'])} | {goal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (CI smoke)")
    ap.add_argument("--rounds", type=int, default=None, help="drain rounds (default 3)")
    ap.add_argument("--workflows", type=int, default=None, help="workflows per drain (2,000)")
    ap.add_argument("--trigger-tasks", type=int, default=None, help="tasks per plain drain (6,000)")
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(WORKLOADS)}")
    ap.add_argument("--before", type=Path, default=None, help="checkout to compare (trigger)")
    ap.add_argument("--after", type=Path, default=ROOT, help="the other checkout (this one)")
    ap.add_argument(
        "--generic-plans",
        action="store_true",
        help="experiment: ALTER the hand-off's functions in the bench database to\n"
        "plan_cache_mode = force_generic_plan (not what the library ships)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    configure_logging("warning", "console")
    global GENERIC_PLANS
    GENERIC_PLANS = args.generic_plans
    sizes = Sizes(args.quick)
    sizes.rounds = args.rounds or sizes.rounds
    sizes.workflows = args.workflows or sizes.workflows
    sizes.plain_trigger = args.trigger_tasks or sizes.plain_trigger
    chosen = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    if "trigger" in chosen and (args.before is None or not (args.before / "hyrex_like").is_dir()):
        H.log("trigger: skipped (give --before CHECKOUT, e.g. a worktree of c9c8608)")
        chosen.remove("trigger")
    result: dict[str, Any] = {
        "source": source_info(),
        "server": H.server_version(),
        "library": check_tree(ROOT),
        "quick": args.quick,
        "generic_plans_experiment": args.generic_plans,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "workloads": {},
    }
    failed = False
    for name in chosen:
        H.log(f"{name} ...")
        try:
            if name == "latency":
                res: Any = [w_latency(sizes, 0)]
            elif name == "throughput":
                res = w_throughput(sizes)
            else:
                assert args.before is not None
                res = w_trigger(
                    sizes.plain_trigger,
                    sizes.rounds,
                    sizes.cap_s,
                    args.before.resolve(),
                    args.after.resolve(),
                )
        except Exception as exc:
            H.log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            failed = True
            continue
        H.log(f"  -> {json.dumps(res, default=str)[:400]}")
        result["workloads"][name] = res
    H.drop_db()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp_ = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"workflows-{stamp_}.json").write_text(json.dumps(result, indent=2, default=str))
    report = table(result)
    (args.out / f"workflows-{stamp_}.md").write_text(report + "\n")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
