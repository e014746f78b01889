"""Benchmarks of periodic tasks (issue #15): how late a scheduled tick's task starts, and what a
scheduler running beside a drain costs it.

    python bench/schedules.py                     # both, full sizes, table + JSON + md
    python bench/schedules.py --only lateness     # lateness, drain
    python bench/schedules.py --quick             # 20 s of ticks, a small drain, 1 rep

lateness: 3 real workers with default options (each also a scheduler, the default) run
``sched_app:hy``, whose ``tick`` is ``every(1 s)``, for 2 minutes (--quick: 20 s). Each body
stamps when it began; lateness = start - ``ctx.scheduled_for``. The first 2 ticks (workers
still starting) are left out. The same run checks exactly once: one task per tick, none
missing between the first and the last.

drain: one default worker drains 20,000 noop tasks (--quick: 5,000) with its scheduler firing
the every(1 s) schedule (the default) and with ``--no-scheduler``, interleaved, 3 repetitions
(--quick: 1); the ratio is with / without (goal: no measurable difference). A 20,000-task
drain lasts about a second, worker start included: ``--drain 200000`` for a steadier ratio.

Same database knobs as run.py (harness.py: BENCH_PG*, a fresh ``bench_hyrex_like`` per run).
Speed is never pass/fail; a duplicate or missing tick makes the command exit 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")  # never start the embedded server here

import harness as H  # noqa: E402
import psycopg  # noqa: E402
from run import outcome, source_info  # noqa: E402
from sched_app import Item, hy, noop  # noqa: E402

from hyrex_like.logs import configure_logging  # noqa: E402

WORKLOADS = ("lateness", "drain")
APP = "sched_app:hy"
WARMUP_TICKS = 2


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.seconds = 20.0 if quick else 120.0
        self.workers = 3
        self.drain = 5_000 if quick else 20_000
        self.reps = 1 if quick else 3
        self.cap_s = 300.0


def _worker(args: list[str], url: str, tag: str, stamps: Path | None = None) -> H.Worker:
    w = H.Worker(args, url, tag)
    w.argv[w.argv.index("bench_app:hy")] = APP
    if stamps is not None:
        w.env["SCHED_BENCH_STAMPS"] = str(stamps)
    return w


def _app(url: str) -> None:
    hy.configure(database_url=url)
    hy.migrate()


# ---------------------------------------------------------------------------- lateness


def w_lateness(sizes: Sizes) -> dict[str, Any]:
    """Ticks of every(1 s) fired by 3 workers' schedulers; each body's start - its tick."""
    url = H.fresh_db()
    _app(url)
    hy.close()
    stamps = H.SCRATCH / "sched_stamps.txt"
    stamps.unlink(missing_ok=True)
    ws = H.Workers([_worker([], url, f"sched{k}", stamps) for k in range(sizes.workers)])
    ws.start()
    try:
        H.wait_until(lambda: stamps.exists() and stamps.stat().st_size, 60, 0.1, "a tick", ws)
        t_end = time.time() + sizes.seconds + WARMUP_TICKS
        while time.time() < t_end:
            if not ws.alive():
                raise RuntimeError(f"a worker exited:\n{ws.tail()}")
            time.sleep(0.5)
    finally:
        ws.stop()
    rows = [ln.split() for ln in stamps.read_text().splitlines() if ln.strip()]
    per_tick: dict[float, set[str]] = collections.defaultdict(set)
    first_start: dict[float, float] = {}
    for tick_s, start_s, task_id in rows:
        tick, start = float(tick_s), float(start_s)
        per_tick[tick].add(task_id)
        first_start[tick] = min(start, first_start.get(tick, start))
    ticks = sorted(per_tick)
    measured = ticks[WARMUP_TICKS:]
    lat = [first_start[t] - t for t in measured]
    db_ticks = [
        r[0].timestamp()
        for r in _rows(url, "SELECT tick_at FROM hyrex_like.schedule_tick ORDER BY 1")
    ]
    per_db_tick = _rows(
        url,
        "SELECT scheduled_for, count(*) FROM hyrex_like.task WHERE task_name = 'tick' "
        "GROUP BY 1 HAVING count(*) > 1",
    )
    missing = [a + 1.0 for a, b in zip(db_ticks, db_ticks[1:], strict=False) if b - a != 1.0]
    return {
        "lateness_ms": H.latency_summary(lat),
        "ticks_measured": len(measured),
        "ticks_recorded": len(db_ticks),
        "bodies_per_tick_over_1": sum(1 for t in ticks if len(per_tick[t]) > 1),
        "tasks_per_tick_over_1": len(per_db_tick),
        "ticks_missing": missing,
        "seconds": sizes.seconds,
        "workers": sizes.workers,
        "outcome": outcome(url),
    }


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql).fetchall()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- drain


def _drain(sizes: Sizes, scheduler: bool, rep: int) -> dict[str, Any]:
    url = H.fresh_db()
    _app(url)
    try:
        for k in range(0, sizes.drain, 10_000):
            noop.send_many([Item(i=i) for i in range(k, min(sizes.drain, k + 10_000))])
    finally:
        hy.close()
    args = [] if scheduler else ["--no-scheduler"]
    tag = f"drain_{'sched' if scheduler else 'nosched'}{rep}"
    res = H.measure_drain(url, sizes.drain, H.Workers([_worker(args, url, tag)]), sizes.cap_s)
    res["outcome"] = outcome(url)
    res["ticks_fired"] = H.scalar(url, "SELECT count(*) FROM hyrex_like.schedule_tick")
    done = H.scalar(
        url,
        "SELECT count(*) FROM hyrex_like.task WHERE task_name = 'noop' AND status = 'completed'",
    )
    assert res.get("partial") or done == sizes.drain, f"{done} of {sizes.drain} noops completed"
    return res


def w_drain(sizes: Sizes) -> dict[str, Any]:
    """Interleaved: without, with, without, with... (the machine's drift hits both alike)."""
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for rep in range(sizes.reps):
        for label, on in (("without", False), ("with", True)):
            res = _drain(sizes, on, rep)
            H.log(f"  drain {label} scheduler rep {rep + 1}: {res['tasks_per_s']:.0f}/s")
            runs[label].append(res)
    ratios = [
        w["tasks_per_s"] / wo["tasks_per_s"]
        for w, wo in zip(runs["with"], runs["without"], strict=True)
    ]
    steady = [
        w["steady_tasks_per_s"] / wo["steady_tasks_per_s"]
        for w, wo in zip(runs["with"], runs["without"], strict=True)
        if w["steady_tasks_per_s"] and wo["steady_tasks_per_s"]
    ]
    return {
        "tasks": sizes.drain,
        "runs": runs,
        "ratios": [round(r, 3) for r in ratios],
        "steady_ratios": [round(r, 3) for r in steady],
    }


# ------------------------------------------------------------------------------ report


def table(result: dict[str, Any]) -> str:
    lines = ["| workload | value | range | goal |", "|---|---|---|---|"]
    w = result["workloads"]
    if "lateness" in w:
        r = w["lateness"]
        s = r["lateness_ms"]
        lines.append(
            f"| tick lateness p50 / p99 / max (ms), {r['workers']} workers, "
            f"{r['ticks_measured']} ticks | {s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.1f} "
            f"| min {s['min']:.1f} | p99 < 50 ms |"
        )
        lines.append(
            f"| ticks: duplicated (db / bodies), missing | {r['tasks_per_tick_over_1']} / "
            f"{r['bodies_per_tick_over_1']}, {len(r['ticks_missing'])} | | 0, 0 |"
        )
    if "drain" in w:
        d = w["drain"]
        for label in ("without", "with"):
            s = H.summarize(x["tasks_per_s"] for x in d["runs"][label])
            lines.append(
                f"| drain {d['tasks']:,} noops, 1 default worker, {label} scheduler (tasks/s) "
                f"| {s['median']:,.0f} | {s['min']:,.0f} - {s['max']:,.0f} | |"
            )
        s = H.summarize(d["ratios"])
        lines.append(
            f"| ratio with / without | {s['median']:.3f} | {s['min']:.3f} - {s['max']:.3f} "
            "| ~1.00 |"
        )
        if d["steady_ratios"]:
            s = H.summarize(d["steady_ratios"])
            lines.append(
                f"| ratio, steady rate | {s['median']:.3f} | {s['min']:.3f} - {s['max']:.3f} | |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 s of ticks, a small drain, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="drain repetitions (default 3)")
    ap.add_argument("--drain", type=int, default=None, help="tasks per drain (default 20,000)")
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(WORKLOADS)}")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    configure_logging("warning", "console")
    sizes = Sizes(args.quick)
    sizes.reps = args.reps or sizes.reps
    sizes.drain = args.drain or sizes.drain
    chosen = [w for w in (args.only.split(",") if args.only else WORKLOADS) if w]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    fns = {"lateness": w_lateness, "drain": w_drain}
    result: dict[str, Any] = {
        "source": source_info(),
        "server": H.server_version(),
        "quick": args.quick,
        "workloads": {},
    }
    failed = False
    for name in chosen:
        H.log(f"{name} ...")
        try:
            res = fns[name](sizes)
        except Exception as exc:
            H.log(f"  {name} FAILED: {type(exc).__name__}: {exc}")
            failed = True
            continue
        H.log(f"  -> {json.dumps(res, default=str)[:400]}")
        result["workloads"][name] = res
        if name == "lateness" and (
            res["tasks_per_tick_over_1"] or res["bodies_per_tick_over_1"] or res["ticks_missing"]
        ):
            H.log("  a tick was duplicated or missing: exactly once failed")
            failed = True
    H.drop_db()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp_ = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"schedules-{stamp_}.json").write_text(json.dumps(result, indent=2, default=str))
    report = table(result)
    (args.out / f"schedules-{stamp_}.md").write_text(report + "\n")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
