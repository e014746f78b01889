"""Benchmark plumbing: fresh databases, worker subprocesses, /proc CPU and memory, statistics.

Stdlib + psycopg only. Environment knobs (all optional):

  BENCH_PGHOST (127.0.0.1), BENCH_PGPORT (5432), BENCH_PGUSER (postgres): the server; trust
      auth is assumed. The harness creates and drops databases on it, never restarts it.
  BENCH_DB (bench_hyrex_like): the database name (dropped and re-created per repetition).
  BENCH_SCRATCH (/tmp/hyrex_like_bench): worker logs and latency files.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
PGHOST = os.environ.get("BENCH_PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("BENCH_PGPORT", "5432"))
PGUSER = os.environ.get("BENCH_PGUSER", "postgres")
DB = os.environ.get("BENCH_DB", "bench_hyrex_like")
SCRATCH = Path(os.environ.get("BENCH_SCRATCH", "/tmp/hyrex_like_bench"))
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ database


def dsn(db: str = DB) -> str:
    return f"postgresql://{PGUSER}@{PGHOST}:{PGPORT}/{db}"


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(dsn("postgres"), autocommit=True)


def fresh_db(name: str = DB) -> str:
    """Drop (with FORCE) and re-create database ``name``; return its URL."""
    with admin() as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn(name)


def drop_db(name: str = DB) -> None:
    with admin() as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def checkpoint() -> None:
    """Flush dirty buffers so a checkpoint caused by the set-up does not land in the timing."""
    with admin() as c:
        c.execute("CHECKPOINT")


def scalar(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


def server_version() -> str:
    with admin() as c:
        row = c.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


# ------------------------------------------------------------------------ CPU from /proc


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(comm, ppid, own CPU ticks, reaped children's CPU ticks) of one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    rest = data[data.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return comm, int(rest[1]), utime + stime, cutime + cstime


def _all() -> dict[int, tuple[str, int, int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                out[int(name)] = s
    return out


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_snapshot(worker_pids: Iterable[int] = ()) -> dict[str, float]:
    """CPU seconds so far of: every PostgreSQL process (live backends + what the postmaster
    reaped), the worker process trees, this process; plus machine busy/total."""
    stats = _all()
    pg = 0
    postmasters = []
    for pid, (comm, ppid, own, _) in stats.items():
        if comm.startswith("postgres"):
            if stats.get(ppid, ("",))[0].startswith("postgres"):
                pg += own
            else:
                postmasters.append(pid)
    for pid in postmasters:  # re-read after the backends: an exit in between counts twice
        s = _stat(pid)
        if s is not None:
            pg += s[2] + s[3]
    kids: dict[int, list[int]] = {}
    for pid, s in stats.items():
        kids.setdefault(s[1], []).append(pid)
    worker = 0
    todo = list(worker_pids)
    while todo:
        p = todo.pop()
        s = stats.get(p)
        if s is not None:
            worker += s[2] + s[3]
        todo.extend(kids.get(p, []))
    t = os.times()
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return {
        "pg": pg / CLK,
        "worker": worker / CLK,
        "bench": t.user + t.system,
        "bench_children": t.children_user + t.children_system,
        "busy": (sum(cpu) - idle) / CLK,
        "total": sum(cpu) / CLK,
        "wall": time.monotonic(),
    }


def cpu_delta(
    a: dict[str, float], b: dict[str, float], tasks: int, wall: float | None = None
) -> dict[str, Any]:
    """CPU seconds and cores per party between two snapshots, and µs of CPU per task."""
    wall = wall if wall is not None else b["wall"] - a["wall"]
    d: dict[str, Any] = {}
    for k in ("pg", "worker", "bench", "bench_children"):
        d[k + "_s"] = round(b[k] - a[k], 3)
        d[k + "_cores"] = round((b[k] - a[k]) / wall, 2) if wall > 0 else None
        d[k + "_us_per_task"] = round(1e6 * (b[k] - a[k]) / tasks, 1) if tasks else None
    total = b["total"] - a["total"]
    d["machine_busy_pct"] = round(100 * (b["busy"] - a["busy"]) / total, 1) if total else None
    d["wall_s"] = round(wall, 3)
    return d


# ------------------------------------------------------------------------- worker process


class Worker:
    """``python -m hyrex_like run-worker ...`` in its own process group, output to a log file."""

    def __init__(self, args: list[str], url: str, tag: str, prefix: list[str] | None = None):
        self.argv = [
            *(prefix or []),
            sys.executable,
            "-m",
            "hyrex_like",
            "run-worker",
            "bench_app:hy",
            *args,
        ]
        self.env = {
            **os.environ,
            "HYREX_LIKE_DATABASE_URL": url,
            "HYREX_LIKE_NO_EMBEDDED": "1",
            "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        SCRATCH.mkdir(parents=True, exist_ok=True)
        self.logpath = SCRATCH / f"worker_{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self._log = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(HERE),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # our own process group: stragglers (executors) of this worker only
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Workers:
    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def start(self) -> Workers:
        for w in self.workers:
            w.start()
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def tail(self) -> str:
        return "\n---\n".join(w.tail() for w in self.workers)


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    workers: Workers | None = None,
) -> Any:
    t0 = time.monotonic()
    while True:
        value = pred()
        if value:
            return value
        if workers is not None and not workers.alive():
            raise RuntimeError(f"worker died while waiting for {what}:\n{workers.tail()}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Unfinished = queued or running; each half is read through its partial index, so the poll
# stays cheap with a million finished rows in the table.
UNFINISHED = (
    "SELECT (SELECT count(*) FROM hyrex_like.task WHERE status = 'queued')"
    " + (SELECT count(*) FROM hyrex_like.task WHERE status = 'running')"
)


def measure_drain(
    url: str,
    n: int,
    workers: Workers,
    cap_s: float,
    poll: float = 0.05,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start ``workers``; poll every ``poll`` s until no task is unfinished. Wall time runs
    from process launch; ``steady`` from the first poll that saw progress."""
    conn = psycopg.connect(url, autocommit=True)
    checkpoint()
    c0 = cpu_snapshot()
    t0 = time.monotonic()
    workers.start()
    t_first: float | None = None
    rem0 = n
    rem = n
    partial = False
    try:
        while True:
            row = conn.execute(UNFINISHED).fetchone()
            rem = int(row[0]) if row else n
            now = time.monotonic()
            if t_first is None and rem < n:
                t_first, rem0 = now, rem
            if rem == 0:
                break
            if not workers.alive():
                raise RuntimeError(f"worker exited early; unfinished={rem}\n{workers.tail()}")
            if now - t0 > cap_s:
                partial = True
                break
            if on_sample is not None:
                on_sample()
            time.sleep(poll)
        t_end = time.monotonic()
        c1 = cpu_snapshot(workers.pids)
    finally:
        workers.stop()
        conn.close()
    wall = t_end - t0
    done = n - rem
    steady = (t_end - t_first) if t_first else None
    out: dict[str, Any] = {
        "tasks_per_s": done / wall,
        "wall_s": round(wall, 3),
        "startup_s": round(t_first - t0, 3) if t_first else None,
        "steady_tasks_per_s": round((rem0 - rem) / steady, 1) if steady else None,
        "cpu": cpu_delta(c0, c1, done),
    }
    if partial:
        out.update(partial=True, completed=done, note=f"stopped at the {cap_s:.0f}s cap")
    return out


# --------------------------------------------------------------------------- memory


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])  # kB
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class MemorySampler:
    """Samples VmRSS/VmHWM of a worker parent and its executor children every ``interval`` s."""

    def __init__(self, parent_pid: int, interval: float = 0.5):
        self.parent = parent_pid
        self.interval = interval
        self.samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = {"parent": _status(self.parent)}
            for k, pid in enumerate(sorted(children_of(self.parent))):
                cmd = _cmdline(pid)
                if "resource_tracker" in cmd:
                    continue
                snap[f"executor{k}:{pid}"] = _status(pid)
            self.samples.append((time.monotonic() - self.t0, snap))
            self._stop.wait(self.interval)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def report(self, skip_s: float = 0.0) -> dict[str, Any]:
        """Per process: RSS at the first sample after ``skip_s`` (start), the last (end), the
        highest sampled RSS and the kernel's high-water mark (VmHWM), all in MiB."""
        by_proc: dict[str, list[tuple[float, dict[str, int]]]] = {}
        for t, snap in self.samples:
            for name, st in snap.items():
                if st:
                    by_proc.setdefault(name, []).append((t, st))
        out = {}
        for name, series in by_proc.items():
            later = [s for s in series if s[0] >= skip_s] or series
            rss = [s[1].get("VmRSS", 0) for s in later]
            out[name] = {
                "start_mib": round(rss[0] / 1024, 1),
                "end_mib": round(rss[-1] / 1024, 1),
                "peak_mib": round(max(rss) / 1024, 1),
                "hwm_mib": round(max(s[1].get("VmHWM", 0) for s in series) / 1024, 1),
                "samples": len(series),
            }
        return out


# ------------------------------------------------------------------------------ stats


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def latency_summary(lat_s: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in lat_s]
    return {
        "p50": round(pct(ms, 50), 2),
        "p95": round(pct(ms, 95), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2),
        "min": round(min(ms), 2),
        "n": len(ms),
    }


def paced(n: int, spacing: float, send: Callable[[int, float], None]) -> None:
    """Call ``send(i, t)`` n times on an absolute schedule; t = time.time() just before."""
    t0 = time.monotonic() + 0.05
    for i in range(n):
        delay = t0 + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(i, time.time())


def read_stamps(path: Path, expected: int, timeout: float, workers: Workers) -> list[float]:
    def got() -> list[list[str]] | None:
        try:
            rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return None
        return rows if len(rows) >= expected else None

    rows = wait_until(got, timeout, 0.1, f"{expected} latency stamps", workers)
    first: dict[int, float] = {}
    for seq, t_enq, t_start in rows:
        first.setdefault(int(seq), float(t_start) - float(t_enq))
    return [first[k] for k in sorted(first)]
