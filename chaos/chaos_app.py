"""The app the chaos runner sends to its workers: `hyrex-like run-worker chaos_app:hy`.

Every task body records its execution in a per-process file under ``$CHAOS_RECORD_DIR``:

    S <task_id> <attempt> <pid> <start>                       the body started
    E <task_id> <attempt> <pid> <start> <end> <ok|raise>      the body returned or raised
    X <task_id> <attempt> <pid> <time>                        another live process held this
                                                              task's lock: two executors at once
    T <task_id> <attempt> <pid> <start> <not_before>          a delayed task's body started
                                                              before its due time

The runner reads these files to count executions and to detect concurrent runs of one task.
Lines are appended with line buffering: a process killed mid-task keeps every line it wrote.

The concurrency check is a real one, not only an interval comparison: each body takes an
exclusive ``lockf`` byte-range lock on byte ``seq`` of a shared lock file. The kernel releases
such a lock the moment its process dies, so a conflict means two *live* processes ran the same
task at the same time.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()

_RECORD_DIR = Path(os.environ.get("CHAOS_RECORD_DIR", "chaos-records"))
_files: dict[int, IO[str]] = {}
_lock_fds: dict[int, int] = {}


class Job(BaseModel):
    seq: int
    sleep: float = 0.0
    fail_times: int = 0
    not_before: float = 0.0  # a delayed send's due time (epoch seconds, the sender's clock)


def _out() -> IO[str]:
    pid = os.getpid()
    f = _files.get(pid)
    if f is None:
        _RECORD_DIR.mkdir(parents=True, exist_ok=True)
        f = open(_RECORD_DIR / f"exec-{pid}.log", "a", buffering=1)  # noqa: SIM115
        _files[pid] = f
    return f


def _lock_fd() -> int:
    pid = os.getpid()
    fd = _lock_fds.get(pid)
    if fd is None:
        _RECORD_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(_RECORD_DIR / "task.locks", os.O_RDWR | os.O_CREAT, 0o600)
        _lock_fds[pid] = fd
    return fd


class _Execution:
    """Records one execution of a task body and holds its lock while it runs."""

    def __init__(self, job: Job) -> None:
        ctx = get_hyrex_context()
        assert ctx is not None, "chaos tasks run only in a worker"
        self.job = job
        self.task_id = str(ctx.task_id)
        self.attempt = ctx.attempt_number
        self.pid = os.getpid()
        self.start = 0.0
        self.locked = False

    def __enter__(self) -> _Execution:
        self.start = time.time()
        out = _out()
        out.write(f"S {self.task_id} {self.attempt} {self.pid} {self.start:.6f}\n")
        if self.start < self.job.not_before:
            out.write(
                f"T {self.task_id} {self.attempt} {self.pid} {self.start:.6f} "
                f"{self.job.not_before:.6f}\n"
            )
        try:
            fcntl.lockf(_lock_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.job.seq)
            self.locked = True
        except OSError:
            out.write(f"X {self.task_id} {self.attempt} {self.pid} {time.time():.6f}\n")
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        end = time.time()
        outcome = "ok" if exc_type is None else "raise"
        if self.locked:
            fcntl.lockf(_lock_fd(), fcntl.LOCK_UN, 1, self.job.seq)
        _out().write(
            f"E {self.task_id} {self.attempt} {self.pid} {self.start:.6f} {end:.6f} {outcome}\n"
        )


@hy.task(queue="chaos", max_retries=2, retry_backoff=0)
def fast(job: Job) -> int:
    with _Execution(job):
        return job.seq


@hy.task(queue="chaos", max_retries=2, retry_backoff=0)
def slow(job: Job) -> int:
    with _Execution(job):
        time.sleep(job.sleep)
        return job.seq


@hy.task(queue="chaos", max_retries=3, retry_backoff=0)
def flaky(job: Job) -> int:
    """Fails its first ``fail_times`` attempts (more than max_retries: it must end failed)."""
    with _Execution(job) as ex:
        if ex.attempt <= job.fail_times:
            raise RuntimeError(f"planned failure {ex.attempt} of {job.fail_times}")
        return job.seq


@hy.task(queue="chaos", max_retries=2, retry_backoff=0)
async def async_task(job: Job) -> int:
    with _Execution(job):
        await asyncio.sleep(job.sleep)
        return job.seq
