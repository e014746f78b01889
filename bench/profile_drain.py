"""Profile a tuned drain with py-spy (``python bench/run.py --profile``).

A worker drains a large backlog; once tasks flow, ``py-spy record --pid <parent>
--subprocesses --idle --nonblocking --format raw`` samples the parent and its executors for a
fixed window. ``--idle`` keeps samples of threads blocked in a syscall, so each process's
samples are its wall-clock time: a frame's share is where that process spends its time,
waiting on Postgres or on a pipe included. The summary groups frames into categories.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import harness as H
import psycopg

# (category, regex on a frame "function (file:line)"); the first match from the leaf up wins.
CATEGORIES = [
    (
        "postgres round trip (psycopg wait/execute)",
        r"\((?:[^)]*/)?psycopg/(?:connection|cursor|waiting|_cursor_base|generators)\.py",
    ),
    ("psycopg adapt/load (params, rows)", r"\((?:[^)]*/)?psycopg/"),
    (
        "wait for events (select on pipes/sockets)",
        r"^(?:\w+\.)?(?:wait|select|_poll|poll) \(.*"
        r"(?:multiprocessing/connection|selectors)\.py",
    ),
    (
        "pipe recv + unpickle",
        r"^(?:\w+\.)?(?:recv|_recv|_recv_bytes|loads) \(.*"
        r"multiprocessing/connection",
    ),
    (
        "pipe send + pickle",
        r"^(?:\w+\.)?(?:send|_send|_send_bytes|dumps|__init__) \(.*"
        r"multiprocessing/(?:connection|reduction)",
    ),
    ("pydantic validation / JSON", r"pydantic|_load \(|dump_result|validate_json|to_json"),
    ("logging (structlog)", r"structlog"),
    (
        "task context (contextvars, HyrexContext)",
        r"_set_context|_reset_context|HyrexContext|"
        r"model_construct",
    ),
    ("task body", r"bench_app\.py"),
    ("uuid / datetime", r"uuid\.py|_utc \(|fromtimestamp"),
]
_CAT = [(name, re.compile(rx)) for name, rx in CATEGORIES]


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return found


def parse(path: Path) -> dict[str, Counter[str]]:
    """raw (collapsed) py-spy output -> {process: Counter(stack -> samples)}."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        proc = procs[-1] if procs else "process ?"  # children are nested under the parent
        keep = [f for f in frames if not f.startswith(("process ", "thread ("))]
        out[proc][";".join(keep)] += int(count)
    return out


def _role(proc: str, parent_pid: int) -> str:
    # py-spy names a process "process <pid>:<command line>"; a forked executor's command line
    # is its parent's, so tell them apart by pid.
    if "resource_tracker" in proc:
        return "resource_tracker (idle helper)"
    pid = re.match(r"process (\d+)", proc)
    if pid and int(pid.group(1)) == parent_pid:
        return "parent"
    return "executor"


def summarize(stacks: dict[str, Counter[str]], parent_pid: int) -> dict[str, Any]:
    roles: dict[str, dict[str, Any]] = {}
    for proc, counter in stacks.items():
        role = _role(proc, parent_pid)
        r = roles.setdefault(
            role,
            {
                "processes": 0,
                "samples": 0,
                "categories": Counter(),
                "leaf": Counter(),
                "inclusive": Counter(),
            },
        )
        r["processes"] += 1
        for stack, n in counter.items():
            frames = [f for f in stack.split(";") if f]
            r["samples"] += n
            cat = "other Python (dispatcher/executor loop)"
            for f in reversed(frames):
                hit = next((name for name, rx in _CAT if rx.search(f)), None)
                if hit:
                    cat = hit
                    break
            r["categories"][cat] += n
            if frames:
                r["leaf"][frames[-1]] += n
            for f in set(frames):
                r["inclusive"][f] += n
    out = {}
    for role, r in roles.items():
        total = r["samples"] or 1
        out[role] = {
            "processes": r["processes"],
            "samples": r["samples"],
            "categories_pct": {
                k: round(100 * v / total, 1) for k, v in r["categories"].most_common()
            },
            "top_self_pct": {k: round(100 * v / total, 1) for k, v in r["leaf"].most_common(20)},
            "top_inclusive_pct": {
                k: round(100 * v / total, 1) for k, v in r["inclusive"].most_common(40)
            },
        }
    return out


def run(sizes: Any, cfg: dict[str, Any], out_dir: Path, stamp: str) -> dict[str, Any]:
    import run as R

    n = 5_000 if sizes.drain < 20_000 else 80_000
    seconds = 3 if n < 20_000 else 10
    url = H.fresh_db()
    R.prefill(url, n)
    raw_path = out_dir / f"profile-{stamp}.txt"
    ws = R.workers(cfg, url, "profile").start()
    conn = psycopg.connect(url, autocommit=True)
    try:
        H.wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM hyrex_like.task WHERE status = 'completed'"
                ).fetchone()[0]
                > 0
            ),
            60,
            0.05,
            "first task done",
            ws,
        )
        time.sleep(0.5)
        done0 = conn.execute(
            "SELECT count(*) FROM hyrex_like.task WHERE status = 'completed'"
        ).fetchone()[0]
        c0 = H.cpu_snapshot(ws.pids)
        t0 = time.monotonic()
        cmd = [
            _py_spy(),
            "record",
            "--pid",
            str(ws.workers[0].pid),
            "--subprocesses",
            "--idle",
            "--nonblocking",
            "--rate",
            "200",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "-o",
            str(raw_path),
        ]
        H.log("profile: " + " ".join(cmd))
        spy = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        wall = time.monotonic() - t0
        c1 = H.cpu_snapshot(ws.pids)
        done1 = conn.execute(
            "SELECT count(*) FROM hyrex_like.task WHERE status = 'completed'"
        ).fetchone()[0]
    finally:
        conn.close()
        ws.stop()
    if spy.returncode != 0 and not raw_path.exists():
        raise RuntimeError(f"py-spy failed: {spy.stderr[-2000:]}")
    summary = summarize(parse(raw_path), ws.workers[0].pid)
    done = done1 - done0
    res = {
        "command": " ".join(cmd),
        "raw_file": str(raw_path),
        "settings": cfg["label"],
        "tasks_during_profile": done,
        "tasks_per_s_during_profile": round(done / wall, 1),
        "cpu": H.cpu_delta(c0, c1, done, wall),
        "summary": summary,
    }
    print(
        f"profiled {wall:.1f} s: {done} tasks ({done / wall:.0f}/s under py-spy); "
        f"raw stacks in {raw_path}"
    )
    for role, s in summary.items():
        print(f"\n== {role} ({s['processes']} process(es), {s['samples']} samples, wall-clock)")
        for k, v in s["categories_pct"].items():
            print(f"  {v:5.1f}%  {k}")
        print("  top self:")
        for k, v in list(s["top_self_pct"].items())[:12]:
            print(f"    {v:5.1f}%  {k}")
    return res
