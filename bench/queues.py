"""Queue settings and the claim path (issue #17): does a drain of a queue without settings keep
its speed when other queues are limited or paused, and how fast does a limited queue drain?

    python bench/queues.py              # 3 repetitions of each case, table + JSON
    python bench/queues.py --quick      # CI smoke run: small sizes, 1 repetition

Cases, each a drain of N no-op tasks by one tuned worker (--processes 2 --prefetch 1024) on a
fresh database (``bench_queues``):

- ``plain``: no queue has a setting (the claim path of every queue without one);
- ``limit_set``: another queue has a concurrency limit (no task in it): every claim also runs
  the limited claim, which finds nothing;
- ``paused_backlog``: an older backlog of B tasks sits in a paused queue: every claim walks it;
- ``limited``: the N tasks are in a queue limited to 2 (the worker has 2 executors), so they go
  through the limited claim only.

A checkout without queue settings (before #17) runs ``plain`` only, for a same-hour comparison.
Numbers are medians with min-max; speed is never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")
os.environ.setdefault("BENCH_DB", "bench_queues")

import harness as H  # noqa: E402
import psycopg  # noqa: E402
from bench_app import Item, hy, noop  # noqa: E402

TUNED = ["--processes", "2", "--prefetch", "1024", "--log-level", "warning"]


def _send(queue: str, n: int) -> None:
    sender = noop.with_config(queue=queue)
    for k in range(0, n, 10_000):
        sender.send_many([Item(i=i) for i in range(k, min(n, k + 10_000))])


def case(name: str, n: int, backlog: int) -> dict[str, Any]:
    url = H.fresh_db()
    hy.configure(database_url=url)
    hy.migrate()
    try:
        if name == "limit_set":
            hy.queue("elsewhere", concurrency_limit=2)
        if name == "paused_backlog":
            hy.pause_queue("held")
            _send("held", backlog)
        if name == "limited":
            hy.queue("default", concurrency_limit=2)
        _send("default", n)
    finally:
        hy.close()
    workers = H.Workers([H.Worker(TUNED, url, f"queues_{name}")])
    return _drain(url, n, workers)


def _drain(url: str, n: int, workers: H.Workers, cap_s: float = 300.0) -> dict[str, Any]:
    """Start ``workers`` and poll until the queue "default" has nothing unfinished (the paused
    backlog stays queued); wall time from process launch, steady from the first progress."""
    unfinished = (
        "SELECT count(*) FROM hyrex_like.task WHERE queue = 'default' "
        "AND status IN ('queued', 'running')"
    )
    conn = psycopg.connect(url, autocommit=True)
    H.checkpoint()  # the prefill's dirty pages are not written during the drain
    t0 = time.monotonic()
    first: tuple[float, int] | None = None
    workers.start()
    try:
        while True:
            row = conn.execute(unfinished).fetchone()
            left = int(row[0]) if row else n
            now = time.monotonic()
            if first is None and left < n:
                first = (now, left)
            if left == 0 or now - t0 > cap_s:
                break
            if not workers.alive():
                raise RuntimeError(f"worker exited early:\n{workers.tail()}")
            time.sleep(0.05)
    finally:
        workers.stop()
        conn.close()
    wall = now - t0
    steady = (first[1] - left) / (now - first[0]) if first and now > first[0] else None
    return {
        "tasks_per_s": (n - left) / wall,
        "wall_s": round(wall, 3),
        "steady_tasks_per_s": round(steady, 1) if steady else None,
        "partial": left > 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repetition")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", default="", help="comma list of cases")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    n, backlog = (2_000, 2_000) if args.quick else (20_000, 10_000)
    cases = ["plain", "limit_set", "paused_backlog", "limited"]
    if not hasattr(hy, "queue"):
        cases = ["plain"]  # a checkout from before queue settings
    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for r in range(reps):  # interleaved: a slow minute of the machine hits every case alike
        for c in cases:
            H.log(f"{c} rep {r + 1}/{reps} ...")
            results[c].append(case(c, n, backlog))
    H.drop_db()
    print(
        f"\nDrain of {n:,} no-op tasks, 1 worker {' '.join(TUNED)}; {reps} rep(s), median "
        "(min-max) tasks/s"
    )
    print("| case | tasks/s | steady tasks/s |\n|---|---|---|")
    summary: dict[str, Any] = {}
    for c in cases:
        rates = [x["tasks_per_s"] for x in results[c]]
        steady = [x["steady_tasks_per_s"] for x in results[c] if x.get("steady_tasks_per_s")]
        summary[c] = {"tasks_per_s": rates, "steady_tasks_per_s": steady}
        cell = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        scell = f"{statistics.median(steady):,.0f}" if steady else "-"
        print(f"| {c} | {cell} | {scell} |")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"queues-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({"n": n, "backlog": backlog, "reps": reps, "runs": results}, indent=1)
    )
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
