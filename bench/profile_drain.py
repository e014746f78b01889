"""Profile a tuned drain (``python bench/run.py --profile``).

A worker drains a large backlog. Once tasks flow: first the CPU each party spends per task
(the dispatcher's loop and its two database threads, the executors, Postgres), read from
/proc with nothing attached; then ``py-spy record --subprocesses --threads`` (CPU samples)
for where each party's CPU goes. The summary groups frames into categories.
"""

from __future__ import annotations

import os
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
    ("database thread idle (waiting for the next round)", r"^_DbThread\._serve "),
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
        threads = [f.partition("): ")[2] for f in frames if f.startswith("thread (")]
        if threads:  # the dispatcher has three: the loop, the writer, the claimer
            proc += f";thread {threads[-1]}"
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
        thread = proc.rpartition(";thread ")[2] if ";thread " in proc else "MainThread"
        return "parent" if thread == "MainThread" else f"parent thread {thread}"
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


def _threads(pid: int) -> dict[str, int]:
    """CPU ticks of each thread of ``pid``, by thread name (the dispatcher names its DB threads
    hyrex-writer and hyrex-claimer; its loop runs on the main thread)."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            data = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        name = "main loop" if int(tid) == pid else data[data.index("(") + 1 : data.rindex(")")]
        out[name] = out.get(name, 0) + int(rest[11]) + int(rest[12])
    return out


def _parties(parent: int) -> dict[str, float]:
    """CPU seconds so far per party: the dispatcher's threads, its executors, Postgres."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {f"dispatcher: {k}": v / tick for k, v in _threads(parent).items()}
    execs = [
        p
        for p in H.children_of(parent)
        if Path(f"/proc/{p}/comm").exists()
        and Path(f"/proc/{p}/comm").read_text().strip() == "hyrex-executor"
    ]
    out["executors (all)"] = sum(sum(_threads(p).values()) for p in execs) / tick
    out["postgres (all processes)"] = H.cpu_snapshot()["pg"]
    return out


def run(sizes: Any, cfg: dict[str, Any], out_dir: Path, stamp: str) -> dict[str, Any]:
    """Two windows on one steady drain: CPU per task of every party, read from /proc with no
    profiler attached; then py-spy (CPU samples only, no ``--idle``) for what each party's CPU
    is spent on. (A wall-clock py-spy run with ``--idle`` over six threads takes a core of its
    own here and slows the drain ~7x, so its shares describe py-spy more than the worker.)"""
    import run as R

    n = 5_000 if sizes.drain < 20_000 else 400_000
    seconds = 1 if n < 20_000 else 3
    url = H.fresh_db()
    R.prefill(url, n)
    raw_path = out_dir / f"profile-{stamp}.txt"
    ws = R.workers(cfg, url, "profile").start()
    conn = psycopg.connect(url, autocommit=True)
    parent = ws.workers[0].pid

    def completed() -> int:
        row = conn.execute(
            "SELECT count(*) FROM hyrex_like.task WHERE status = 'completed'"
        ).fetchone()
        return int(row[0]) if row else 0

    try:
        H.wait_until(lambda: completed() > 0, 60, 0.05, "first task done", ws)
        time.sleep(0.3)
        # window 1: CPU per task, nothing attached
        done0, p0, t0 = completed(), _parties(parent), time.monotonic()
        time.sleep(seconds)
        done1, p1, t1 = completed(), _parties(parent), time.monotonic()
        # window 2: where that CPU goes
        cmd = [
            _py_spy(),
            "record",
            "--pid",
            str(parent),
            "--subprocesses",
            "--nonblocking",
            "--threads",
            "--rate",
            "100",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "-o",
            str(raw_path),
        ]
        H.log("profile: " + " ".join(cmd))
        t2 = time.monotonic()
        spy = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        done2, t3 = completed(), time.monotonic()
    finally:
        conn.close()
        ws.stop()
    if spy.returncode != 0 and not raw_path.exists():
        raise RuntimeError(f"py-spy failed: {spy.stderr[-2000:]}")
    done = done1 - done0
    per_task = {k: round(1e6 * (p1[k] - p0.get(k, 0.0)) / done, 1) for k in sorted(p1) if done}
    summary = summarize(parse(raw_path), parent)
    res = {
        "command": " ".join(cmd),
        "raw_file": str(raw_path),
        "settings": cfg["label"],
        "tasks_per_s_unprofiled": round(done / (t1 - t0), 1),
        "tasks_per_s_under_py_spy": round((done2 - done1) / (t3 - t2), 1),
        "cpu_us_per_task": per_task,
        "summary": summary,
    }
    print(
        f"window 1 (no profiler): {done} tasks, {done / (t1 - t0):.0f}/s; "
        f"window 2 (py-spy): {(done2 - done1) / (t3 - t2):.0f}/s; raw stacks in {raw_path}"
    )
    print("CPU per task (us):")
    for k, v in per_task.items():
        print(f"  {v:6.1f}  {k}")
    for role, s_ in summary.items():
        print(f"\n== {role} ({s_['processes']} process(es), {s_['samples']} CPU samples)")
        for k, v in s_["categories_pct"].items():
            print(f"  {v:5.1f}%  {k}")
        print("  top self:")
        for k, v in list(s_["top_self_pct"].items())[:8]:
            print(f"    {v:5.1f}%  {k}")
    return res
