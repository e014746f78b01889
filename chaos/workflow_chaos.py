"""Workflow chaos runner: N three-step workflows through kills and a restart, none lost or doubled.

    python chaos/workflow_chaos.py            # 500 workflows, 2 workers x 2 processes
    python chaos/workflow_chaos.py --quick    # 100 workflows, about 30 s

Issue #16's durable hand-off (a trigger queues the next step in the transaction that records
the previous one's completion), tested on run_chaos.py's throwaway cluster with its workers and
faults: ``chaos_chain`` (workflow_app.py) is sent while executors and whole workers are
SIGKILLed, the workers' backends terminated and PostgreSQL restarted. At the end every workflow
must be COMPLETED (SUCCESS) with the right result, one task row per step, each step's payload its
predecessor's stored result, and every step's body completed exactly once as run_chaos.py
counts it: each body started has its own run row (task, attempt); each step task has one
completed run, its last, whose body returned; no attempt ran twice or two at once; no step
began before its predecessor's body returned. (A body that returned and then died with its
process before the worker recorded it is lost and retried, a new attempt: counted apart.)
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import operator
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run_chaos as rc  # noqa: E402
import workflow_app as app  # noqa: E402
from run_chaos import Cluster, Run, Workers, log  # noqa: E402

from hyrex_like import HyrexLikeError, WorkflowStatus  # noqa: E402

SCHEMA = "hyrex_like"
ACTIONS = {  # kind: weight (no cancel, no SIGTERM: every workflow must end SUCCESS)
    "executor_sigkill": 40,
    "worker_sigkill": 20,
    "backends_terminated": 28,
    "postgres_restart": 12,
}


def sender(run: Run, jobs: dict[int, list[float]]) -> None:
    """Send every workflow (one ``chain.send`` each), paced over the send window. A send the
    chaos broke is looked up by its seq and sent again only if it did not commit."""
    try:
        pause = run.args.send_seconds / max(1, len(jobs))
        for seq in sorted(jobs):
            t0 = time.monotonic()
            send_one(run, seq, jobs[seq])
            run.sent += 1
            time.sleep(max(0.0, pause - (time.monotonic() - t0)))
    except Exception as exc:  # pragma: no cover - reported as a violation
        run.sender_failed.append(f"sender: {type(exc).__name__}: {exc}")
    finally:
        run.sender_done.set()


def send_one(run: Run, seq: int, sleeps: list[float]) -> str:
    deadline = time.monotonic() + 120
    while True:
        try:
            return str(app.chain.send(app.Start(seq=seq, sleeps=sleeps)).id)
        except (HyrexLikeError, psycopg.Error, OSError) as exc:
            run.send_errors += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not send workflow {seq} for 120s: {exc}") from exc
            time.sleep(0.2)
            found = stored_id(run, seq, deadline)
            if found is not None:
                return found


def stored_id(run: Run, seq: int, deadline: float) -> str | None:
    while True:
        try:
            with run.cluster.connect() as conn:
                row = conn.execute(
                    "SELECT id::text FROM workflow WHERE (args->>'seq')::int = %s", (seq,)
                ).fetchone()
                return None if row is None else str(row[0])
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def open_count(run: Run, n: int) -> int | None:
    """Workflows not yet completed (sent or not), or None if the database is away."""
    try:
        with run.cluster.connect() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM workflow WHERE state = 'completed'),"
                " (SELECT coalesce(max(extract(epoch FROM"
                "   now() - coalesce(r.claimed_at, r.started_at))), 0)"
                "  FROM task_run AS r WHERE r.status = 'running')"
            ).fetchone()
    except psycopg.Error:
        return None
    assert row is not None
    run.max_running_age = max(run.max_running_age, float(row[1]))
    return n - int(row[0])


def check(run: Run, n: int, workers: Workers, elapsed: float) -> int:
    with run.cluster.connect() as conn:
        wfs = conn.execute(
            "SELECT id::text, (args->>'seq')::int, state, finished_at IS NOT NULL, args"
            " FROM workflow"
        ).fetchall()
        tasks = conn.execute(
            "SELECT id::text, task_name, status, attempt_count, workflow_id::text,"
            " workflow_step, args, result FROM task"
        ).fetchall()
        runs = conn.execute(
            "SELECT task_id::text, attempt_number, status,"
            " extract(epoch FROM finished_at - coalesce(claimed_at, started_at)) FROM task_run"
        ).fetchall()
    execs, conflicts, _ = rc.read_records(run.record_dir)
    v: list[str] = []

    by_seq: dict[int, list[Any]] = collections.defaultdict(list)
    for w in wfs:
        by_seq[w[1]].append(w)
    missing = [s for s in range(n) if s not in by_seq]
    doubled = [s for s, rows in by_seq.items() if len(rows) > 1]
    if missing or doubled:
        v.append(f"workflows missing: seq {missing[:5]}; twice: seq {doubled[:5]}")
    steps_of: dict[str, dict[int, list[Any]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for t in tasks:
        if t[4] is None:
            v.append(f"task outside any workflow: {t}")
        else:
            steps_of[t[4]][t[5]].append(t)
    runs_by_task: dict[str, dict[int, Any]] = collections.defaultdict(dict)
    for r in runs:
        runs_by_task[r[0]][r[1]] = r

    def ok_end(key: tuple[str, int]) -> float | None:
        ends = [e.end for e in execs.get(key, []) if e.outcome == "ok" and e.end is not None]
        return max(ends) if ends else None

    first_starts: dict[str, float] = {}
    returned: collections.Counter[str] = collections.Counter()  # bodies that returned, by task
    for (tid, _a), ex in execs.items():
        returned[tid] += sum(e.outcome == "ok" for e in ex)
        for e in ex:
            first_starts[tid] = min(e.start, first_starts.get(tid, e.start))

    not_completed = bad_rows = bad_results = started_early = once = 0
    for wid, seq, state, finished, wargs in wfs:
        steps = steps_of.get(wid, {})
        if state != "completed" or not finished:
            not_completed += 1
            v.append(f"workflow {wid} (seq {seq}) is {state}: {describe(steps, runs_by_task)}")
            continue
        if sorted(steps) != [0, 1, 2] or any(len(rows) != 1 for rows in steps.values()):
            bad_rows += 1
            v.append(f"workflow {wid}: step rows {describe(steps, runs_by_task)}")
            continue
        chain = [steps[i][0] for i in range(3)]
        want_args = wargs
        prev_end: float | None = None
        for i, (tid, name, status, attempts, _w, _s, targs, result) in enumerate(chain):
            if name != app.STEPS[i] or status != "completed":
                v.append(f"workflow {wid} step {i}: task {tid} {name} is {status}")
            if targs != want_args:
                bad_rows += 1
                v.append(f"workflow {wid} step {i}: payload {targs} is not {want_args}")
            want_args = result
            mine = runs_by_task.get(tid, {})
            if sorted(mine) != list(range(1, attempts + 1)):
                v.append(f"task {tid}: attempt_count {attempts}, run rows {sorted(mine)}")
            done = [a for a, r in mine.items() if r[2] == "completed"]
            end = ok_end((tid, attempts))
            if done != [attempts] or end is None:
                v.append(f"task {tid}: completed runs {done} of {attempts}; ok body end {end}")
            else:
                once += 1
            first_start = first_starts.get(tid)
            if prev_end is not None and first_start is not None and first_start < prev_end:
                started_early += 1
                v.append(
                    f"workflow {wid} step {i} began at {first_start:.6f}, before step {i - 1}"
                    f" returned at {prev_end:.6f}"
                )
            prev_end = end
        final = chain[2][7] or {}
        want = {"seq": seq, "acc": app.expected_acc(seq), "trail": list(app.STEPS)}
        if final != want:
            bad_results += 1
            v.append(f"workflow {wid}: result {final}, expected {want}")

    # the library's own view: summary status and typed result, as a user reads them
    app.hy.store.pool().check()  # the chaos killed idle pooled connections; reads don't retry
    summary = collections.Counter[str]()
    for wid, seq, *_ in wfs:
        handle = app.hy.get_workflow(wid)
        summary[str(handle.status)] += 1
        if handle.status == WorkflowStatus.COMPLETED:
            res = handle.result
            if not isinstance(res, app.Final) or res.acc != app.expected_acc(seq):
                v.append(f"workflow {wid}: handle.result {res!r}")
    if summary[str(WorkflowStatus.COMPLETED)] != n:
        v.append(f"summary statuses {dict(summary)}: not all {n} COMPLETED")

    # attempts recorded (run rows) vs bodies executed (records), as run_chaos.py counts them
    run_keys = {(r[0], r[1]): r for r in runs}
    again = [k for k, ex in execs.items() if len(ex) > 1]
    by_start = operator.attrgetter("start")
    killed = run.killed_with_worker  # a body begun before its worker's SIGKILL may run again
    undone = [k for k in again if all(e.pid in killed for e in sorted(execs[k], key=by_start)[:-1])]
    twice = [k for k in again if k not in undone]
    if twice:
        v.append(f"{len(twice)} attempts executed more than once, e.g. {twice[:3]}")
    unrecorded = set(execs) - set(run_keys)
    if unrecorded:
        v.append(f"{len(unrecorded)} executed attempts without a run row: {sorted(unrecorded)[:3]}")
    never_started = killed_mid = result_lost = 0
    for key, r in run_keys.items():
        ex = execs.get(key, [])
        if r[2] == "running":
            v.append(f"run {key} still running at the end")
        elif r[2] == "completed":
            if not any(e.outcome == "ok" for e in ex):
                v.append(f"run {key} is completed but no execution of it returned")
        elif r[2] == "failed":
            v.append(f"run {key} failed: no step body raises")
        elif not ex:
            never_started += 1
        elif all(e.end is None for e in ex):
            killed_mid += 1
        else:
            result_lost += 1
    returned_twice = sum(c > 1 for c in returned.values())
    overlaps = list(conflicts)
    by_task: dict[str, list[rc.Execution]] = collections.defaultdict(list)
    for (tid, _a), ex in execs.items():
        by_task[tid].extend(e for e in ex if e.end is not None)
    for tid, ex in by_task.items():
        ex.sort(key=lambda e: e.start)
        for a, b in zip(ex, ex[1:], strict=False):
            if a.end is not None and b.start < a.end:
                overlaps.append(f"task {tid}: pid {a.pid} and pid {b.pid} overlap")
    if overlaps:
        v.append(f"{len(overlaps)} concurrent executions: " + "; ".join(overlaps[:3]))
    longest = max((float(r[3]) for r in runs if r[3] is not None), default=0.0)
    stuck = max(longest, run.max_running_age)
    if stuck > rc.STUCK_LIMIT:
        v.append(f"a run stayed open {stuck:.1f}s (limit {rc.STUCK_LIMIT:g}s)")
    v += workers.unexpected_exits + workers.bad_stop_codes + run.sender_failed

    statuses = sorted(collections.Counter(r[2] for r in runs).items())
    by_status = ", ".join(f"{k} {c}" for k, c in statuses)
    rows: list[tuple[str, str, str]] = [
        ("workflows sent", f"{n}", f"stored {len(wfs)}; runner resent {run.send_errors}"),
        ("workflows completed", f"{summary[str(WorkflowStatus.COMPLETED)]}", "SUCCESS"),
        ("  not completed", f"{not_completed}", "must be 0"),
        ("  wrong final result", f"{bad_results}", "must be 0"),
        ("step tasks", f"{len(tasks)}", f"must be {3 * n}; rows or payloads wrong: {bad_rows}"),
        ("steps completed exactly once", f"{once}", f"must be {3 * n}"),
        ("steps begun before their predecessor returned", f"{started_early}", "must be 0"),
        ("attempts recorded (task_run rows)", f"{len(runs)}", by_status),
        ("attempts executed (bodies started)", f"{len(execs)}", f"{len(unrecorded)} unrecorded"),
        ("  run rows never started", f"{never_started}", "claimed, lost before the body ran"),
        ("  killed mid-run", f"{killed_mid}", "body started, process killed"),
        ("  finished, result lost", f"{result_lost}", "body returned, process killed first"),
        ("  begun, undone with their worker", f"{len(undone)}", "run again, same attempt"),
        ("step bodies that returned twice", f"{returned_twice}", "killed before recorded"),
        ("attempts executed twice", f"{len(twice)}", "must be 0"),
        ("steps run by two executors at once", f"{len(overlaps)}", "must be 0"),
        *((f"chaos: {kind}", f"{run.chaos[kind]}", "") for kind in ACTIONS),
        ("  executors killed inside a body", f"{run.chaos['in_body']}", "the rest idle"),
        ("  backends terminated", f"{run.backends_killed}", ""),
        ("  worker processes started", f"{workers.started}", "incl. restarts"),
        ("longest a run stayed open (s)", f"{stuck:.2f}", f"limit {rc.STUCK_LIMIT:g}"),
        ("wall time (s)", f"{elapsed:.1f}", ""),
    ]
    if run.args.figures_json:
        figures: dict[str, Any] = {name.strip(): value for name, value, _ in rows}
        figures["violations"] = len(v)
        figures["seed"] = run.args.seed
        Path(run.args.figures_json).write_text(json.dumps(figures, indent=2))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>7}  {note}")
    if v:
        print(f"\nVIOLATIONS ({len(v)}):")
        for line in v[:50]:
            print(f"  - {line}")
        return 1
    print("\nOK: no violations")
    return 0


def describe(steps: dict[int, list[Any]], runs_by_task: dict[str, dict[int, Any]]) -> str:
    """A workflow's step rows and their runs (attempt:status), for a violation's evidence."""
    return (
        "; ".join(
            f"step {i} task {t[0]} {t[2]} attempts {t[3]} runs "
            + str([f"{a}:{r[2]}" for a, r in sorted(runs_by_task.get(t[0], {}).items())])
            for i in sorted(steps)
            for t in steps[i]
        )
        or "no step rows"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", type=int, default=None, help="default 500; --quick 100")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--send-seconds", type=float, default=None, help="default 60; --quick 15")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of chaos at most")
    p.add_argument("--min-interval", type=float, default=0.5)
    p.add_argument("--max-interval", type=float, default=2.5)
    p.add_argument("--settle-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="100 workflows, about 40 s")
    p.add_argument("--figures-json", help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (cluster, logs)")
    args = p.parse_args(argv)
    args.workflows = args.workflows or (100 if args.quick else 500)
    if args.send_seconds is None:
        args.send_seconds = 15.0 if args.quick else 60.0
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def fault(run: Run, workers: Workers) -> None:
    """One fault: every kind once first, then by weight (run_chaos.py's rule and faults), an
    executor SIGKILL aimed at one inside a step's body when there is one."""
    kinds, weights = zip(*ACTIONS.items(), strict=True)
    missing = [k for k in kinds if run.chaos[k] == 0]
    kind = run.rng.choice(missing) if missing else run.rng.choices(kinds, weights)[0]
    if kind == "executor_sigkill":
        busy = [
            (w, pid)
            for w in workers.running()
            for pid in workers.executor_pids(w)
            if in_body(run.record_dir / f"exec-{pid}.log")
        ]
        if busy:
            w, pid = run.rng.choice(busy)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            log(f"SIGKILL executor {pid} of worker {w.proc.pid} inside a step's body")
            run.chaos[kind] += 1
            run.chaos["in_body"] += 1
            return
    rc.chaos_step(run, workers, {kind: 1})


def in_body(path: Path) -> bool:
    """The executor writing ``path`` last started a body and has not returned from it."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            last = f.read().splitlines()[-1:]
    except OSError:
        return False
    return bool(last) and last[0].startswith(b"S ")


def wait_open(run: Run, workers: Workers, n: int, until: float, chaos: bool) -> int | None:
    lo, hi = run.args.min_interval, run.args.max_interval
    next_chaos = time.monotonic() + run.rng.uniform(lo, hi)
    n_open: int | None = None
    while time.monotonic() < until:
        workers.check()
        n_open = open_count(run, n)
        if run.sender_done.is_set() and n_open == 0:
            return 0
        if chaos and time.monotonic() >= next_chaos:
            fault(run, workers)
            next_chaos = time.monotonic() + run.rng.uniform(lo, hi)
        time.sleep(0.2)
    return n_open


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    base = Path(tempfile.mkdtemp(prefix="hyrex-wf-chaos-"))
    record_dir = base / "records"
    record_dir.mkdir()
    cluster = Cluster(base)
    n = args.workflows
    log(f"seed {args.seed}; {n} workflows x 3 steps, {args.workers} workers; temp dir {base}")
    workers: Workers | None = None
    code = 1
    try:
        cluster.create()
        log(f"throwaway cluster on 127.0.0.1:{cluster.port} ({cluster.bin}, as {cluster.user})")
        app.hy.configure(database_url=cluster.url, schema_name=SCHEMA, auto_migrate=True)
        app.hy.migrate()
        rng = random.Random(args.seed)
        run = Run(args, base, cluster, record_dir, rng)
        jobs = app.plan(n, rng)
        workers = Workers(args.workers, cluster, base, record_dir, app="workflow_app:hy")
        workers.start_all()
        t0 = time.monotonic()
        thread = threading.Thread(target=sender, args=(run, jobs), daemon=True)
        thread.start()
        wait_open(run, workers, n, t0 + args.duration, chaos=True)
        log(f"chaos over after {time.monotonic() - t0:.0f}s: {dict(run.chaos)}; settling")
        left = wait_open(run, workers, n, time.monotonic() + args.settle_timeout, chaos=False)
        if left:
            log(f"still {left} workflows not completed after {args.settle_timeout:g}s")
        thread.join(5)
        workers.stop_all()
        code = check(run, n, workers, time.monotonic() - t0)
    except Exception as exc:
        log(f"runner failed: {type(exc).__name__}: {exc}")
        code = 2
    finally:
        if workers is not None:
            workers.kill_all()
        app.hy.close()
        cluster.stop()
        if args.keep or code != 0:
            log(f"kept {base} (worker logs, records, postgres.log)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
