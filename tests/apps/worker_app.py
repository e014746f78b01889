"""The app the worker tests run: `hyrex-like run-worker worker_app:hy`.

Task bodies report what they did by appending one JSON line per event to
``$HYREX_TEST_OUT/events.jsonl`` (each test points it at its own directory), so a test can see
what ran, in which order, in which process, without asking the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


def note(kind: str, **data: Any) -> None:
    """Append one event line; O_APPEND keeps lines from concurrent processes whole."""
    out = os.environ.get("HYREX_TEST_OUT")
    if not out:
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _attempt() -> int:
    ctx = get_hyrex_context()
    assert ctx is not None, "get_hyrex_context() is None inside a running task"
    return ctx.attempt_number


def note_error(exc: Exception) -> None:
    note("on_error", type=type(exc).__name__, message=str(exc))


def broken_handler(exc: Exception) -> None:
    note("on_error", type=type(exc).__name__, message=str(exc))
    raise RuntimeError("the on_error handler itself broke")


class Item(BaseModel):
    n: int


class Nap(BaseModel):
    n: int
    seconds: float


class Doubled(BaseModel):
    n: int
    doubled: int
    tags: list[str]


# ------------------------------------------------------------------------- plain work


@hy.task
def record(item: Item) -> int:
    note("record", n=item.n)
    return item.n


@hy.task
def until_released(item: Item) -> int:
    """Runs until the test creates ``$HYREX_TEST_OUT/release-<n>`` (10 minutes at most)."""
    note("start", n=item.n, attempt=_attempt())
    release = os.path.join(os.environ.get("HYREX_TEST_OUT", "."), f"release-{item.n}")
    deadline = time.monotonic() + 600
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    note("end", n=item.n)
    return item.n


@hy.task
def nap(job: Nap) -> int:
    note("start", n=job.n, attempt=_attempt())
    time.sleep(job.seconds)
    note("end", n=job.n)
    return job.n


@hy.task
def arg_type(item: Item) -> str:
    assert isinstance(item, Item), f"got {type(item).__name__}, not Item"
    return f"{type(item).__name__}:{item.n}"


@hy.task
def returns_model(item: Item) -> Doubled:
    return Doubled(n=item.n, doubled=item.n * 2, tags=["a", "b"])


@hy.task
def returns_error_key(item: Item) -> dict[str, Any]:
    return {"error": "this is data, not a failure", "status": "failed", "n": item.n}


@hy.task(max_retries=3, retry_backoff=0, on_error=note_error)
def returns_undumpable(item: Item) -> Any:
    note("start", n=item.n, attempt=_attempt())
    return {"n": item.n, "handle": object()}


@hy.task
async def async_work(item: Item) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    return {"n": item.n, "loop_running": loop.is_running()}


@hy.task
def whoami(item: Item) -> dict[str, Any]:
    """Report the context; with n > 0, send a child whoami(n - 1) from inside the task."""
    ctx = get_hyrex_context()
    assert ctx is not None
    child = whoami.send(Item(n=item.n - 1)).id if item.n > 0 else None
    return {
        "task_id": str(ctx.task_id),
        "task_name": ctx.task_name,
        "attempt_number": ctx.attempt_number,
        "max_retries": ctx.max_retries,
        "queue": ctx.queue,
        "priority": ctx.priority,
        "parent_id": str(ctx.parent_id) if ctx.parent_id else None,
        "root_id": str(ctx.root_id) if ctx.root_id else None,
        "worker_id": str(ctx.worker_id) if ctx.worker_id else None,
        "child": str(child) if child else None,
    }


# ------------------------------------------------------------------------- failures


@hy.task(max_retries=2, retry_backoff=1.0, on_error=note_error)
def fail_twice(item: Item) -> str:
    attempt = _attempt()
    note("start", n=item.n, attempt=attempt)
    if attempt <= 2:
        raise ValueError(f"attempt {attempt} of task {item.n} fails on purpose")
    return f"ok after {attempt}"


@hy.task(max_retries=1, retry_backoff=1.0, on_error=note_error)
def always_fails(item: Item) -> str:
    note("start", n=item.n, attempt=_attempt())
    raise KeyError(f"missing thing {item.n}")


@hy.task(max_retries=1, retry_backoff=0, on_error=note_error)
def fail_first(item: Item) -> str:
    if _attempt() == 1:
        raise ValueError("first attempt fails")
    return "ok"


@hy.task(max_retries=0, on_error=note_error)
def never_works(item: Item) -> str:
    raise RuntimeError("never works")


@hy.task(max_retries=1, retry_backoff=0, on_error=broken_handler)
def fail_first_bad_handler(item: Item) -> str:
    if _attempt() == 1:
        raise ValueError("first attempt fails")
    return "ok"


@hy.task(timeout_seconds=1, max_retries=1, retry_backoff=0, on_error=note_error)
def too_slow(item: Item) -> str:
    note("start", n=item.n, attempt=_attempt())
    time.sleep(60)
    return "never"


@hy.task(timeout_seconds=0.5, max_retries=0, on_error=broken_handler)
def too_slow_bad_handler(item: Item) -> str:
    time.sleep(60)
    return "never"


@hy.task(max_retries=1, retry_backoff=0, on_error=note_error)
def hang_first(item: Item) -> int:
    """Attempt 1 hangs (a test kills its executor); attempt 2 returns."""
    attempt = _attempt()
    note("start", n=item.n, attempt=attempt)
    if attempt == 1:
        time.sleep(120)
    return attempt


@hy.task(max_retries=1, retry_backoff=0, on_error=note_error)
def exit_first(item: Item) -> int:
    attempt = _attempt()
    note("start", n=item.n, attempt=attempt)
    if attempt == 1:
        os._exit(3)
    return attempt


@hy.task(max_retries=0)
def long_first(item: Item) -> int:
    """Attempt 1 runs long (a test kills the whole worker); later attempts return at once."""
    attempt = _attempt()
    note("start", n=item.n, attempt=attempt)
    if attempt == 1:
        time.sleep(120)
    note("end", n=item.n, attempt=attempt)
    return attempt


# ------------------------------------------------------------------------- queues


@hy.task(queue="alpha")
def on_alpha(item: Item) -> int:
    note("alpha", n=item.n)
    return item.n


@hy.task(queue="beta")
def on_beta(item: Item) -> int:
    note("beta", n=item.n)
    return item.n


@hy.task(queue="gamma")
def on_gamma(item: Item) -> int:
    note("gamma", n=item.n)
    return item.n


@hy.task(max_retries=1, retry_backoff=0)
def long_then_flaky(item: Item) -> int:
    """Attempt 1 runs long (a test interrupts it), attempt 2 fails, attempt 3 succeeds."""
    attempt = _attempt()
    note("start", n=item.n, attempt=attempt)
    if attempt == 1:
        time.sleep(120)
    if attempt == 2:
        raise RuntimeError("second attempt fails")
    return attempt


@hy.task
def nul_error(item: Item) -> None:
    """Raises an exception whose message holds a NUL (PostgreSQL text cannot store one)."""
    raise ValueError(f"bad byte \x00 in record {item.n}")


@hy.task
def surrogate_error(item: Item) -> None:
    """Raises an exception whose message holds a lone surrogate (not valid in JSON or UTF-8),
    as decoding bytes with errors="surrogateescape" produces."""
    raise ValueError(b"bad \xff name".decode("utf-8", "surrogateescape") + f" {item.n}")


TRICKY = 'he said "no", {a,b} \\ NULL\n\ttab é'


@hy.task
def tricky_error(item: Item) -> None:
    """Raises with quotes, a backslash, braces, commas, the word NULL and non-ASCII text."""
    raise ValueError(f"{TRICKY} {item.n}")


@hy.task
def tricky_result(item: Item) -> dict[str, str]:
    """Returns the same awkward text, as a key and as a value."""
    return {TRICKY: f"{TRICKY} {item.n}"}


@hy.task
def returns_none(item: Item) -> None:
    """Returns nothing: the result is stored as SQL NULL, not as a JSON null."""
    return None
