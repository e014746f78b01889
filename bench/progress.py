"""Benchmark of progress reporting (issue #16): what ``update_progress`` costs a drain.

    python bench/progress.py                  # 20,000 tasks per drain, 3 interleaved rounds
    python bench/progress.py --quick          # 2,000 tasks, 3 rounds (a CI smoke run)
    python bench/progress.py --tasks 100000 --reps 5

One worker with default options (``run-worker progress:hy``: this module, which adds its
tasks to bench_app's registry) drains N tasks, in interleaved rounds of three kinds: N
``noop`` tasks (noop); N ``context`` tasks, which take their context
(``get_hyrex_context()``, as any task that reports progress does) and read a field; N
``reporting`` tasks (with), which take it and call ``ctx.update_progress({'done': k, 'total':
5})`` five times, so 5 N calls a round (100,000 at the default size). The goal's ratio is the
median drain rate with / context: what the 100,000 calls cost (goal: under 5% slower, a ratio
>= 0.95); with / noop is shown too (the calls and building the context, ~4 us a task). After
each "with" round the rows holding the last value ({'done': 5, 'total': 5}) are counted: it is
written with each task's outcome.

Same database knobs as run.py (harness.py: BENCH_PG*), but its own database by default
(BENCH_DB=bench_hyrex_like_progress, made afresh per round).
Speed is never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")  # never start the embedded server here
# a database of its own, so another benchmark running meanwhile does not drop it mid-round
os.environ.setdefault("BENCH_DB", "bench_hyrex_like_progress")

import harness as H  # noqa: E402
from bench_app import Item, hy, noop  # noqa: E402
from run import outcome, prefill, source_info  # noqa: E402

from hyrex_like import get_hyrex_context  # noqa: E402
from hyrex_like.logs import configure_logging  # noqa: E402

CALLS = 5


@hy.task
def reporting(item: Item) -> None:
    """The "with" rounds: reports its progress ``CALLS`` times, else a noop."""
    ctx = get_hyrex_context()
    assert ctx.attempt_number >= 1  # (what "context" does)
    for k in range(1, CALLS + 1):
        ctx.update_progress({"done": k, "total": CALLS})


@hy.task
def context(item: Item) -> None:
    """The "context" rounds: takes its context (as "with" does) and reports nothing."""
    assert get_hyrex_context().attempt_number >= 1


KINDS = {"noop": noop, "context": context, "with": reporting}


def _worker(url: str, tag: str) -> H.Workers:
    w = H.Worker([], url, tag)
    w.argv[w.argv.index("bench_app:hy")] = "progress:hy"  # this module's app: both tasks
    return H.Workers([w])


def _round(n: int, label: str, rep: int, cap_s: float) -> dict[str, Any]:
    url = H.fresh_db()
    prefill(url, n, task=KINDS[label])
    res = H.measure_drain(url, n, _worker(url, f"progress_{label}{rep}"), cap_s)
    res["outcome"] = outcome(url)
    if label == "with":
        res["last_value_rows"] = H.scalar(
            url,
            "SELECT count(*) FROM hyrex_like.task WHERE progress = %s::jsonb",
            (json.dumps({"done": CALLS, "total": CALLS}),),
        )
    return res


def w_drain(n: int, reps: int, cap_s: float) -> dict[str, Any]:
    """Interleaved: noop, context, with, noop, ... (the machine's drift hits all alike)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in KINDS}
    for rep in range(reps):
        for label in KINDS:
            res = _round(n, label, rep, cap_s)
            H.log(
                f"  {label}, round {rep + 1}: {res['tasks_per_s']:,.0f}/s "
                f"(steady {res['steady_tasks_per_s'] or 0:,.0f}/s)"
            )
            runs[label].append(res)
    med = {k: statistics.median(r["tasks_per_s"] for r in v) for k, v in runs.items()}
    steady = {
        k: statistics.median(r["steady_tasks_per_s"] or 0.0 for r in v) for k, v in runs.items()
    }
    return {
        "tasks": n,
        "calls_per_round": n * CALLS,
        "runs": runs,
        "median_tasks_per_s": {k: round(v, 1) for k, v in med.items()},
        "median_steady_tasks_per_s": {k: round(v, 1) for k, v in steady.items()},
        "ratio": round(med["with"] / med["context"], 3),
        "steady_ratio": round(steady["with"] / steady["context"], 3) if steady["context"] else None,
        "ratio_to_noop": round(med["with"] / med["noop"], 3),
        "last_value_rows": [r["last_value_rows"] for r in runs["with"]],
    }


def table(res: dict[str, Any]) -> str:
    n = res["tasks"]
    lines = ["| drain, 1 default worker | median tasks/s | min - max |", "|---|---|---|"]
    whats = {
        "noop": f"{n:,} noops",
        "context": f"{n:,} tasks taking their context",
        "with": f"{n:,} tasks taking their context x {CALLS} progress calls",
    }
    for label, what in whats.items():
        s = H.summarize(r["tasks_per_s"] for r in res["runs"][label])
        lines.append(f"| {what} | {s['median']:,.0f} | {s['min']:,.0f} - {s['max']:,.0f} |")
    lines.append(
        f"| ratio with / context: the calls (goal >= 0.95) | {res['ratio']:.3f} "
        f"(steady: {res['steady_ratio']}) | |"
    )
    lines.append(f"| ratio with / noop: the calls and the context | {res['ratio_to_noop']:.3f} | |")
    lines.append(f"| rows with the last value, per round (of {n:,}) | {res['last_value_rows']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 tasks per drain (a smoke run)")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per drain (default 20,000)")
    ap.add_argument("--reps", type=int, default=3, help="rounds of each (default 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    configure_logging("warning", "console")
    n = args.tasks or (2_000 if args.quick else 20_000)
    started = time.time()
    res = w_drain(n, max(1, args.reps), cap_s=600.0)
    result = {
        "source": source_info(),
        "server": H.server_version(),
        "argv": sys.argv,
        "seconds": round(time.time() - started, 1),
        "drain": res,
    }
    H.drop_db()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"progress-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    report = table(res)
    (args.out / f"progress-{stamp}.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
