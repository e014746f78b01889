"""Benchmark of Prometheus metrics (issue #18): what ``run-worker --metrics-port`` costs the
tuned drain.

    python bench/metrics_overhead.py            # 20,000 tasks per drain, 5 A/B pairs
    python bench/metrics_overhead.py --quick    # 2,000 tasks, 1 pair (a CI smoke run)
    python bench/metrics_overhead.py --pairs 7 --tasks 50000

Each pair drains N no-op tasks twice with the tuned worker of bench/run.py (``--tuned``, an
index into its TUNED_CANDIDATES; default 1: --processes 2 --prefetch 1024 --log-level
warning), once without metrics (off) and once with ``--metrics-port`` (on), alternating which
goes first, each on a fresh database (run.py's `w_drain`: prefill, then time the drain from
process launch). While an "on" drain runs, /metrics is scraped every ``--scrape-every``
seconds (default 1: harsher than Prometheus' usual 15). The goal is the ratio of median drain
rates, on / off, of at least 0.95 (within 5%). Same database knobs as run.py (harness.py:
BENCH_PG*), its own database by default (BENCH_DB=bench_hyrex_like_metrics).
Speed is never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("HYREX_LIKE_NO_EMBEDDED", "1")
os.environ.setdefault("BENCH_DB", "bench_hyrex_like_metrics")

import harness as H  # noqa: E402
from run import (  # noqa: E402
    TUNED_CANDIDATES,
    Sizes,
    outcome,
    precompile,
    prefill,
    source_info,
    w_drain,
)

from hyrex_like.logs import configure_logging  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper(threading.Thread):
    """Scrapes one worker's ``/metrics`` every ``every`` seconds until stopped; keeps the last
    answer."""

    def __init__(self, port: int, every: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.done = threading.Event()
        self.scrapes = 0
        self.last = ""

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.scrape()

    def scrape(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                self.last = r.read().decode()
            self.scrapes += 1
        except OSError:  # not listening yet, or gone
            pass

    def attempts(self) -> float:
        """hyrex_like_attempts_total summed over tasks and statuses, in the last answer."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.last.splitlines()
            if line.startswith("hyrex_like_attempts_total")
        )


class ScrapedWorkers(H.Workers):
    """The drain's workers, each scraped once more after the drain, before they stop (until
    their counts add up to the ``n`` attempts, at most 10 s: the last write's rows are counted
    as it returns)."""

    def __init__(self, workers: list[H.Worker], scrapers: list[Scraper], n: int) -> None:
        super().__init__(workers)
        self.scrapers = scrapers
        self.n = n

    def stop(self) -> None:
        for s in self.scrapers:
            s.done.set()
            s.join()
        deadline = time.monotonic() + 10
        while True:
            for s in self.scrapers:
                s.scrape()
            if self.counted() >= self.n or time.monotonic() > deadline or not self.alive():
                break
            time.sleep(0.1)
        super().stop()

    def counted(self) -> float:
        return sum(s.attempts() for s in self.scrapers)


def drain(cfg: dict[str, Any], n: int, cap_s: float, metrics: bool, every: float) -> dict[str, Any]:
    if not metrics:
        return w_drain(cfg, n, cap_s, "metrics_off")(0)
    # As run.py's w_drain, but each worker with its own --metrics-port and scraper.
    url = H.fresh_db()
    prefill(url, n)
    scrapers, workers = [], []
    for k in range(cfg["workers"]):
        port = _free_port()
        args = [*cfg["args"], "--metrics-port", str(port)]
        workers.append(H.Worker(args, url, f"metrics_on_{k}"))
        scrapers.append(Scraper(port, every))
    for s in scrapers:
        s.start()
    group = ScrapedWorkers(workers, scrapers, n)
    res = H.measure_drain(url, n, group, cap_s)
    res["outcome"] = outcome(url)
    res["settings"] = cfg["label"]
    if not res.get("partial"):
        done = res["outcome"]["tasks"].get("completed", 0)
        assert done == n, f"{done} of {n} tasks completed: {res['outcome']}"
    res["scrapes"] = sum(s.scrapes for s in scrapers)
    res["attempts_seen_by_last_scrape"] = group.counted()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 tasks, 1 pair")
    ap.add_argument("--pairs", type=int, default=None, help="A/B pairs (default 5; quick: 1)")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per drain (default 20,000)")
    ap.add_argument("--tuned", type=int, default=1, help="index into run.py's TUNED_CANDIDATES")
    ap.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    configure_logging("warning")
    precompile()
    sizes = Sizes(args.quick)
    n = args.tasks or sizes.drain
    pairs = args.pairs or (1 if args.quick else 5)
    cfg = TUNED_CANDIDATES[args.tuned]
    rates: dict[str, list[float]] = {"off": [], "on": []}
    runs: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for pair in range(pairs):
        order = ("off", "on") if pair % 2 == 0 else ("on", "off")
        for kind in order:
            H.log(f"pair {pair + 1}/{pairs}: metrics {kind}, {n:,} tasks ...")
            res = drain(cfg, n, sizes.cap_s, kind == "on", args.scrape_every)
            if res.get("partial"):
                raise SystemExit(f"a drain did not finish within {sizes.cap_s}s: {res}")
            rates[kind].append(res["tasks_per_s"])
            runs.append({"pair": pair, "metrics": kind, **res})
            H.log(
                f"  -> {res['tasks_per_s']:.0f}/s"
                + (f", {res['scrapes']} scrapes" if kind == "on" else "")
            )
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    paired = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
    paired = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
    result = {
        "env": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "postgres": H.server_version(),
            "loadavg_at_end": os.getloadavg(),
            "started": started,
            **source_info(),
        },
        "settings": cfg["label"],
        "tasks": n,
        "pairs": pairs,
        "scrape_every_s": args.scrape_every,
        "tasks_per_s": {"off": rates["off"], "on": rates["on"]},
        "median": {"off": round(off, 1), "on": round(on, 1)},
        "ratio_on_to_off": round(on / off, 3),
        # each pair ran back to back, so its own ratio is free of the drift between pairs
        "paired_ratio_median": round(paired, 3),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"metrics_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"tuned drain ({cfg['label']}), {n:,} tasks, {pairs} A/B pairs, "
        f"scrape every {args.scrape_every:g}s"
    )
    print(f"  metrics off: median {off:.0f}/s  {[round(r) for r in rates['off']]}")
    print(f"  metrics on:  median {on:.0f}/s  {[round(r) for r in rates['on']]}")
    print(f"  ratio on/off: {on / off:.3f}; median of the pairs' ratios {paired:.3f}")
    print(f"  {path}")
    for run in runs:
        if run["metrics"] == "on" and run["attempts_seen_by_last_scrape"] != n:
            raise SystemExit(
                f"the workers' /metrics counted {run['attempts_seen_by_last_scrape']:.0f} "
                f"attempts after a drain of {n:,} (pair {run['pair'] + 1})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
