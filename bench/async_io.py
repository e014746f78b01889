"""I/O-bound async tasks side by side: hyrex_like against PgQueuer and Procrastinate.

Each system runs the same task, ``await asyncio.sleep(0.1)``, N times (2,000 by default) with
its own concurrency setting, on its own database (``bench_async_<system>``, created and
dropped here). The time is from the first enqueue to the last completion, with the workers
already started and warm (one task run first); each system runs ``--reps`` times (default 3)
and the median is reported.

    python bench/async_io.py                      # the three systems, a markdown table
    python bench/async_io.py --smoke              # 200 tasks, hyrex_like only, once (CI)

The peers run through their own virtualenvs (``/tmp/anchors/venvs/NAME``, made by
``/work/shared/peers/setup_venvs.sh pgqueuer procrastinate``; ``--venvs`` to change), as
subprocesses of this script (``--child``); so do their workers. This module is also what
their workers import (``async_io:...``): each system's objects are built on first access
(`__getattr__`), so importing it needs no peer installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1")
NAP = 0.1

# Each system's concurrency, on a 2-core machine: 2 worker processes for the two that run
# processes; 200 tasks at once in all for every system.
SETTINGS: dict[str, dict[str, Any]] = {
    "hyrex_like": {
        "label": "run-worker --processes 2 --async-concurrency 100",
        "args": ["--processes", "2", "--async-concurrency", "100"],
    },
    "pgqueuer": {
        "label": "2 `pgq run` processes, --batch-size 50 --max-concurrent-tasks 100 each",
        "procs": 2,
        "args": ["--batch-size", "50", "--max-concurrent-tasks", "100"],
    },
    "procrastinate": {
        "label": "2 `procrastinate worker` processes, --concurrency=100 each",
        "procs": 2,
        "args": ["--concurrency=100"],
    },
}


def dsn(system: str) -> str:
    return f"{PG}/bench_async_{system}"


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def fresh_db(system: str) -> None:
    admin(f"DROP DATABASE IF EXISTS bench_async_{system} WITH (FORCE)")
    admin(f"CREATE DATABASE bench_async_{system}")


def scalar(url: str, query: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


# ---------------------------------------------------------------- what the workers import


def __getattr__(name: str) -> Any:  # PEP 562: built on first access, by the worker's import
    if name == "hy":
        return _hyrex_app()
    if name == "proc_app":
        return _procrastinate_app()
    if name == "create_pgqueuer":
        return _pgqueuer_factory()
    raise AttributeError(name)


_cache: dict[str, Any] = {}


def _hyrex_app() -> Any:
    if "hy" not in _cache:
        from hyrex_like import HyrexRegistry

        hy = HyrexRegistry()

        @hy.task
        async def nap(i: int) -> None:
            await asyncio.sleep(NAP)

        _cache["hy"], _cache["nap"] = hy, nap
    return _cache["hy"]


def _procrastinate_app() -> Any:
    if "proc_app" not in _cache:
        import procrastinate

        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=dsn("procrastinate"))
        )

        @app.task(name="nap")
        async def nap(i: int = 0) -> None:
            await asyncio.sleep(NAP)

        _cache["proc_app"], _cache["proc_nap"] = app, nap
    return _cache["proc_app"]


def _pgqueuer_factory() -> Any:
    from contextlib import asynccontextmanager

    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, PgQueuer

    @asynccontextmanager
    async def create_pgqueuer() -> Any:
        conn = await asyncpg.connect(dsn("pgqueuer"))
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("nap")
        async def nap(job: Job) -> None:
            await asyncio.sleep(NAP)

        try:
            yield pgq
        finally:
            await conn.close()

    return create_pgqueuer


# ---------------------------------------------------------------- one run (in the child)


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join([str(HERE), full.get("PYTHONPATH", "")])
    full.update(env)
    return subprocess.Popen(
        cmd,
        env=full,
        cwd=str(HERE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def run_hyrex_like(n: int) -> float:
    url = dsn("hyrex_like")
    env = {"HYREX_LIKE_DATABASE_URL": url}
    os.environ.update(env)
    hy = _hyrex_app()
    nap = _cache["nap"]
    hy.migrate()
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "hyrex-like"), "run-worker", "async_io:hy", "--log-level", "warning"]
    procs = [_start(cmd + SETTINGS["hyrex_like"]["args"], env)]
    done = "SELECT count(*) FROM hyrex_like.task WHERE status = 'completed'"
    try:
        nap.send(-1)
        wait_for(lambda: scalar(url, done) == 1, 60, "the warm-up task")
        t0 = time.perf_counter()
        nap.send_many(list(range(n)))
        wait_for(lambda: scalar(url, done) == n + 1, 600, f"{n} tasks")
        wall = time.perf_counter() - t0
    finally:
        _stop(procs)
        hy.close()
    return wall


def run_pgqueuer(n: int) -> float:
    import psycopg
    from pgqueuer.db import SyncPsycopgDriver
    from pgqueuer.queries import SyncQueries

    url = dsn("pgqueuer")
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "pgq"), "--pg-dsn", url, "install"], check=True, stdout=subprocess.DEVNULL
    )
    cfg = SETTINGS["pgqueuer"]
    cmd = [str(bin_dir / "pgq"), "run", "async_io:create_pgqueuer", *cfg["args"]]
    procs = [_start(cmd, {}) for _ in range(cfg["procs"])]
    conn = psycopg.connect(url, autocommit=True)
    q = SyncQueries(SyncPsycopgDriver(conn))
    remaining = "SELECT count(*) FROM pgqueuer"  # a finished job is deleted (and logged)
    try:
        q.enqueue("nap", b"{}")
        wait_for(lambda: scalar(url, remaining) == 0, 60, "the warm-up task")
        t0 = time.perf_counter()
        q.enqueue(["nap"] * n, [b"{}"] * n, [0] * n)
        wait_for(lambda: scalar(url, remaining) == 0, 600, f"{n} tasks")
        wall = time.perf_counter() - t0
    finally:
        _stop(procs)
        conn.close()
    return wall


def run_procrastinate(n: int) -> float:
    url = dsn("procrastinate")
    app = _procrastinate_app()
    nap = _cache["proc_nap"]
    with app.open():
        app.schema_manager.apply_schema()
    cfg = SETTINGS["procrastinate"]
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "procrastinate"), "--app=async_io.proc_app", "worker", *cfg["args"]]
    procs = [_start(cmd, {}) for _ in range(cfg["procs"])]
    done = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    try:
        with app.open():
            nap.defer(i=-1)
            wait_for(lambda: scalar(url, done) == 1, 60, "the warm-up task")
            t0 = time.perf_counter()
            for k in range(0, n, 1000):
                nap.batch_defer(*({"i": i} for i in range(k, min(n, k + 1000))))
            wait_for(lambda: scalar(url, done) == n + 1, 600, f"{n} tasks")
            wall = time.perf_counter() - t0
    finally:
        _stop(procs)
    return wall


RUNNERS = {
    "hyrex_like": run_hyrex_like,
    "pgqueuer": run_pgqueuer,
    "procrastinate": run_procrastinate,
}


# ---------------------------------------------------------------- the parent


def python_of(system: str, venvs: Path) -> str:
    return sys.executable if system == "hyrex_like" else str(venvs / system / "bin" / "python")


def one_run(system: str, n: int, venvs: Path) -> float:
    fresh_db(system)
    try:
        out = subprocess.run(
            [
                python_of(system, venvs),
                str(Path(__file__).resolve()),
                "--child",
                system,
                "-n",
                str(n),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
            if system == "hyrex_like"
            else {**os.environ, "PYTHONPATH": str(HERE)},
        )
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{system} failed:\n{exc.stdout}\n{exc.stderr}") from None
    finally:
        admin(f"DROP DATABASE IF EXISTS bench_async_{system} WITH (FORCE)")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["wall_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--systems", default="hyrex_like,pgqueuer,procrastinate")
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/anchors/venvs"))
    parser.add_argument("--smoke", action="store_true", help="200 tasks, hyrex_like, once")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"wall_s": RUNNERS[args.child](args.n)}))
        return
    if args.smoke:
        args.n, args.reps, args.systems = 200, 1, "hyrex_like"
    systems = args.systems.split(",")
    walls: dict[str, list[float]] = {s: [] for s in systems}
    for rep in range(args.reps):  # interleaved, so drift on a shared machine hits all alike
        for system in systems:
            wall = one_run(system, args.n, args.venvs)
            walls[system].append(wall)
            print(f"# {system} rep {rep + 1}: {wall:.2f}s", file=sys.stderr)
    floor = args.n * NAP
    print(f"{args.n:,} tasks, each `await asyncio.sleep({NAP})`; median of {args.reps}\n")
    print("| system | settings | wall (s), median | min-max | tasks/s |")
    print("|---|---|---:|---:|---:|")
    for system in systems:
        w = walls[system]
        med = statistics.median(w)
        print(
            f"| {system} | {SETTINGS[system]['label']} | {med:.2f} | {min(w):.2f}-{max(w):.2f} "
            f"| {args.n / med:,.0f} |"
        )
    print(f"\n(one task at a time would take {floor:.0f}s)")
    if args.smoke:
        # 200 tasks at 200 at once: ~0.1 s of sleeping; one at a time would be 20 s
        if statistics.median(walls["hyrex_like"]) > floor / 4:
            raise SystemExit("smoke: async tasks did not run side by side")


if __name__ == "__main__":
    main()
