"""Where the dispatcher's loop spends its wall time, and how big its batches are.

    python bench/trace_dispatcher.py [N] [--processes 2] [--prefetch 128]

Runs a real `Dispatcher` in this process (its executors are real spawned processes) over N
queued no-op tasks, watched through its public hooks (`hyrex_like.observer.WorkerObserver`):
the time of each step of the loop, rows per claim and per write, jobs per pipe message.
Prints a histogram per call site and the wall-time split of the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H  # noqa: E402
import psycopg  # noqa: E402
from bench_app import hy  # noqa: E402

from hyrex_like.config import WorkerOptions  # noqa: E402
from hyrex_like.dispatcher import Dispatcher  # noqa: E402
from hyrex_like.logs import configure_logging  # noqa: E402
from hyrex_like.observer import WorkerObserver  # noqa: E402

rows_per: dict[str, Counter[int]] = defaultdict(Counter)
time_in: dict[str, float] = defaultdict(float)
calls: Counter[str] = Counter()


class Tracer(WorkerObserver):
    """Counts rows per round trip and jobs per pipe message, and times each step of the loop,
    through the worker's public observer hooks."""

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        time_in["sql claim"] += seconds
        calls["sql claim"] += 1
        rows_per["claim"][got] += 1

    def written(self, rows: int, seconds: float) -> None:
        time_in["sql finish"] += seconds
        calls["sql finish"] += 1
        rows_per["finish"][rows] += 1

    def dispatched(self, executor: int, jobs: int) -> None:
        rows_per["jobs per pipe message to an executor"][jobs] += 1

    def step(self, name: str, seconds: float) -> None:
        if name == "sync":
            calls["loop iterations"] += 1
        time_in[f"step {name}"] += seconds


def _hist(c: Counter[int]) -> dict[str, Any]:
    n = sum(c.values())
    total = sum(k * v for k, v in c.items())
    return {"calls": n, "mean": round(total / n, 1) if n else None, "most_common": c.most_common(8)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=20_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=128)
    args = ap.parse_args()
    configure_logging("warning")  # as the CLI would with --log-level warning
    url = H.fresh_db()
    os.environ["HYREX_LIKE_DATABASE_URL"] = url
    import run as R

    R.prefill(url, args.n)
    hy.configure(database_url=url)
    options = WorkerOptions(processes=args.processes, prefetch=args.prefetch, log_level="warning")
    disp = Dispatcher(hy, "bench_app:hy", options, observer=Tracer())
    t: dict[str, float] = {}

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            while True:
                left = c.execute(H.UNFINISHED).fetchone()[0]  # type: ignore[index]
                if left < args.n and "first" not in t:
                    t["first"] = time.perf_counter()
                    for k in list(time_in):
                        time_in[k] = 0.0  # count the steady state only
                    calls.clear()
                    rows_per.clear()
                if left == 0:
                    t["end"] = time.perf_counter()
                    disp.request_stop()
                    return
                time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    disp.run()
    hy.close()
    H.drop_db()
    wall = t["end"] - t["first"]
    steps = {k: v for k, v in time_in.items() if k.startswith("step")}
    out = {
        "tasks": args.n,
        "settings": vars(args),
        "steady_wall_s": round(wall, 3),
        "steady_tasks_per_s": round(args.n / wall, 1),
        "loop_iterations": calls["loop iterations"],
        "tasks_per_loop_iteration": round(args.n / max(1, calls["loop iterations"]), 2),
        "loop_wall_pct": {
            k: round(100 * v / wall, 1) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])
        },
        "sql_ms_per_call": {
            k: round(1000 * time_in[k] / calls[k], 3)
            for k in ("sql claim", "sql finish")
            if calls[k]
        },
        "sql_us_per_task": {
            k: round(1e6 * time_in[k] / args.n, 1) for k in ("sql claim", "sql finish")
        },
        "batch_sizes": {k: _hist(v) for k, v in rows_per.items()},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
