"""Benchmarks of the task lifecycle (issue #14): how late delayed tasks start, what keyed
sends cost beside unkeyed ones, and how a drain fares while a million finished tasks are pruned.

    python bench/lifecycle.py                     # all three, 3 repetitions, table + JSON
    python bench/lifecycle.py --only lateness     # lateness, keyed_send, prune_drain
    python bench/lifecycle.py --quick             # small sizes, 1 repetition (a smoke run)

Same database knobs as run.py (harness.py: BENCH_PG*, a fresh ``bench_hyrex_like`` per
repetition). Workers are real ``python -m hyrex_like run-worker bench_app:hy`` processes with
default options. Speed is never pass/fail; the goals of the issue are printed beside the
numbers: lateness p99 under 20 ms, unkeyed sends as fast as before, a drain at >= 80% of its
speed while pruning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")  # never start the embedded server here

import harness as H  # noqa: E402
import psycopg  # noqa: E402
from bench_app import Item, Stamp, hy, noop, stamp  # noqa: E402
from run import FINISHED_RUNS_SQL, FINISHED_SQL, app, outcome, prefill, source_info  # noqa: E402

from hyrex_like.logs import configure_logging  # noqa: E402

WORKLOADS = ("lateness", "keyed_send", "prune_drain")
DEFAULT_WORKER = {"label": "1 worker, defaults", "workers": 1, "args": []}


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.delayed = 100 if quick else 1_000
        self.spread_s = 2.0 if quick else 10.0
        self.sends = 1_000 if quick else 10_000
        self.finished = 20_000 if quick else 1_000_000
        self.drain = 5_000 if quick else 100_000
        self.cap_s = 120.0 if quick else 600.0


# ---------------------------------------------------------------------------- lateness


def w_lateness(sizes: Sizes, rep: int) -> dict[str, Any]:
    """``sizes.delayed`` tasks sent at once, due evenly over ``sizes.spread_s`` seconds from 2 s
    on, to one idle worker; each body stamps when it began. Lateness = start - due time."""
    url = H.fresh_db()
    app(url)
    path = H.SCRATCH / f"lateness_{rep}.txt"
    warm = H.SCRATCH / "lateness_warm.txt"
    path.unlink(missing_ok=True)
    warm.unlink(missing_ok=True)
    ws = H.Workers([H.Worker([], url, f"lateness{rep}")])
    ws.start()
    try:
        stamp.send(Stamp(seq=0, t_enqueue=time.time(), path=str(warm)))  # the worker is up
        H.read_stamps(warm, 1, 60, ws)
        first = time.time() + 2.0
        step = sizes.spread_s / sizes.delayed
        for i in range(sizes.delayed):
            due = first + i * step
            stamp.send(
                Stamp(seq=i, t_enqueue=due, path=str(path)),
                run_at=datetime.fromtimestamp(due, UTC),
            )
        lat = H.read_stamps(path, sizes.delayed, sizes.spread_s + 60, ws)
    finally:
        ws.stop()
        hy.close()
    early = sum(1 for x in lat if x < 0)
    return {
        "lateness_ms": H.latency_summary(lat),
        "started_early": early,
        "tasks": sizes.delayed,
        "spread_s": sizes.spread_s,
    }


# --------------------------------------------------------------------------- keyed sends


def w_keyed_send(sizes: Sizes, rep: int) -> dict[str, Any]:
    """Sends per second, one process, in one hour: unkeyed, keyed (each key new), and keyed
    sends that find their key taken (deduplicated: nothing written)."""
    url = H.fresh_db()
    app(url)
    n = sizes.sends
    out: dict[str, Any] = {}
    try:
        noop.send(Item(i=-1))
        noop.send(Item(i=-2), idempotency_key="warm")
        for label, key in (
            ("unkeyed", None),
            ("keyed_new", lambda i: f"k{rep}-{i}"),
            ("keyed_duplicate", lambda i: f"k{rep}-{i}"),
            ("unkeyed_again", None),
        ):
            H.checkpoint()
            t0 = time.perf_counter()
            if key is None:
                for i in range(n):
                    noop.send(Item(i=i))
            else:
                for i in range(n):
                    noop.send(Item(i=i), idempotency_key=key(i))
            out[label] = round(n / (time.perf_counter() - t0), 1)
    finally:
        hy.close()
    rows = H.scalar(url, "SELECT count(*) FROM hyrex_like.task")
    assert rows == 3 * n + 2, f"expected {3 * n + 2} rows, found {rows}"
    out["keyed_to_unkeyed"] = round(out["keyed_new"] / out["unkeyed"], 3)
    return out


# ------------------------------------------------------------------------ prune + drain


def _seed_finished(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(FINISHED_SQL, {"n": n})
        c.execute(FINISHED_RUNS_SQL)
        c.execute("VACUUM ANALYZE hyrex_like.task")
        c.execute("VACUUM ANALYZE hyrex_like.task_run")


def _drain(url: str, n: int, cap_s: float, tag: str) -> dict[str, Any]:
    prefill(url, n, start=10_000_000)
    ws = H.Workers([H.Worker([], url, tag)])
    return H.measure_drain(url, n, ws, cap_s)


def w_prune_drain(sizes: Sizes, rep: int) -> dict[str, Any]:
    """A default worker drains ``sizes.drain`` tasks beside ``sizes.finished`` finished ones
    two days old: once alone, once while ``hyrex-like prune --older-than 1d`` deletes those."""
    url = H.fresh_db()
    app(url)
    hy.close()
    H.log(f"  seeding {sizes.finished:,} finished tasks ...")
    _seed_finished(url, sizes.finished)
    alone = _drain(url, sizes.drain, sizes.cap_s, f"alone{rep}")
    H.log(f"  drain alone: {alone['tasks_per_s']:.0f}/s")
    with psycopg.connect(url, autocommit=True) as c:  # the first drain's rows are finished
        c.execute(
            "DELETE FROM hyrex_like.task_run WHERE task_id IN (SELECT id FROM "
            "hyrex_like.task WHERE finished_at > now() - interval '1 day')"
        )
        c.execute("DELETE FROM hyrex_like.task WHERE finished_at > now() - interval '1 day'")
        c.execute("VACUUM ANALYZE hyrex_like.task")
    prune_log = H.SCRATCH / f"prune_{rep}.log"
    argv = [
        sys.executable,
        "-m",
        "hyrex_like",
        "prune",
        "--older-than",
        "1d",
        "--database-url",
        url,
    ]
    pruned: dict[str, Any] = {}

    def prune() -> None:
        t0 = time.monotonic()
        with open(prune_log, "wb") as log:
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
        pruned.update(exit_code=code, seconds=round(time.monotonic() - t0, 1))

    prefill(url, sizes.drain, start=20_000_000)
    thread = threading.Thread(target=prune)
    thread.start()
    time.sleep(1.0)  # the prune is under way when the drain starts
    ws = H.Workers([H.Worker([], url, f"pruning{rep}")])
    during = H.measure_drain(url, sizes.drain, ws, sizes.cap_s)
    overlapped = thread.is_alive()  # still pruning when the drain ended: it ran throughout
    thread.join()
    H.log(f"  drain while pruning: {during['tasks_per_s']:.0f}/s; prune {pruned}")
    left = H.scalar(
        url, "SELECT count(*) FROM hyrex_like.task WHERE finished_at < now() - interval '1 day'"
    )
    return {
        "drain_alone": alone,
        "drain_while_pruning": during,
        "ratio": round(during["tasks_per_s"] / alone["tasks_per_s"], 3),
        "prune": pruned | {"output": prune_log.read_text(errors="replace")[-500:]},
        "prune_outlasted_drain": overlapped,
        "old_rows_left": left,
        "outcome": outcome(url),
    }


# ------------------------------------------------------------------------------ report


def table(result: dict[str, Any]) -> str:
    lines = ["| workload | median | min - max | goal |", "|---|---|---|---|"]
    w = result["workloads"]
    if "lateness" in w:
        for k in ("p50", "p99", "max"):
            s = H.summarize(r["lateness_ms"][k] for r in w["lateness"])
            goal = "p99 < 20 ms" if k == "p99" else ""
            lines.append(
                f"| lateness {k} (ms) | {s['median']:.1f} | {s['min']:.1f} - "
                f"{s['max']:.1f} | {goal} |"
            )
        early = sum(r["started_early"] for r in w["lateness"])
        lines.append(f"| started before due | {early} | | 0 |")
    if "keyed_send" in w:
        for k in ("unkeyed", "keyed_new", "keyed_duplicate", "unkeyed_again", "keyed_to_unkeyed"):
            s = H.summarize(r[k] for r in w["keyed_send"])
            unit = "" if k == "keyed_to_unkeyed" else " (sends/s)"
            lines.append(
                f"| {k}{unit} | {s['median']:,.2f} | {s['min']:,.2f} - {s['max']:,.2f} | |"
            )
    if "prune_drain" in w:
        runs = w["prune_drain"]
        for label, key in (
            ("drain alone", "drain_alone"),
            ("drain while pruning", "drain_while_pruning"),
        ):
            s = H.summarize(r[key]["tasks_per_s"] for r in runs)
            lines.append(
                f"| {label} (tasks/s) | {s['median']:,.0f} | {s['min']:,.0f} - {s['max']:,.0f} | |"
            )
        s = H.summarize(r["ratio"] for r in runs)
        lines.append(f"| ratio | {s['median']:.2f} | {s['min']:.2f} - {s['max']:.2f} | >= 0.80 |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick: 1)")
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(WORKLOADS)}")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    configure_logging("warning", "console")
    sizes = Sizes(args.quick)
    reps = args.reps or (1 if args.quick else 3)
    chosen = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    fns = {"lateness": w_lateness, "keyed_send": w_keyed_send, "prune_drain": w_prune_drain}
    result: dict[str, Any] = {
        "source": source_info(),
        "server": H.server_version(),
        "reps": reps,
        "quick": args.quick,
        "workloads": {},
    }
    failed = False
    for name in chosen:
        runs = []
        for rep in range(reps):
            H.log(f"{name} rep {rep + 1}/{reps} ...")
            try:
                res = fns[name](sizes, rep)
            except Exception as exc:
                H.log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
                failed = True
                continue
            H.log(f"  -> {json.dumps(res, default=str)[:400]}")
            runs.append(res)
        if runs:
            result["workloads"][name] = runs
    H.drop_db()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp_ = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"lifecycle-{stamp_}.json").write_text(json.dumps(result, indent=2, default=str))
    report = table(result)
    (args.out / f"lifecycle-{stamp_}.md").write_text(report + "\n")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
