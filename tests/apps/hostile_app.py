"""Hostile task bodies for the worker-side bad-input tests: `run-worker hostile_app:hy`.

Each task misbehaves in a way only the worker can see (an exception that cannot be printed, a
`KeyboardInterrupt`, closed standard streams, children left running). Tasks report their pid
and what they did as JSON lines in ``$HYREX_TEST_OUT/events.jsonl``, as worker_app.py does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


def note(kind: str, **data: Any) -> None:
    """Append one event line (os.open/os.write: works with fds 0-2 closed)."""
    out = os.environ["HYREX_TEST_OUT"]
    line = json.dumps({"kind": kind, "pid": os.getpid(), **data}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Mode(BaseModel):
    mode: str


# ------------------------------------------------------- exceptions that cannot be printed


class Unprintable(Exception):
    """An exception whose ``str`` (and ``repr``) raise what the payload asks for."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.mode = mode

    def __str__(self) -> str:
        if self.mode == "str_returns_int":
            return 42  # type: ignore[return-value]
        if self.mode == "str_raises_base":
            raise KeyboardInterrupt("from __str__")
        if self.mode == "str_raises_unprintable":
            raise Unprintable("str_raises")
        raise ValueError("__str__ refuses")

    def __repr__(self) -> str:
        raise ValueError("__repr__ refuses")


def note_on_error(exc: BaseException) -> None:
    """on_error that itself chokes on the exception's str(), with an unprintable error."""
    note("on_error", type=type(exc).__qualname__)
    raise Unprintable("str_raises")


@hy.task(max_retries=0, on_error=note_on_error)
def unprintable(arg: Mode) -> None:
    note("start", mode=arg.mode)
    raise Unprintable(arg.mode)


# ------------------------------------------------------------- BaseException from task code


class CustomBase(BaseException):
    """Not an Exception: only `except BaseException` catches it."""


def _base_exception(mode: str) -> BaseException:
    return {
        "keyboard_interrupt": KeyboardInterrupt("pressed by the task"),
        "custom_base": CustomBase("custom base"),
        "system_exit": SystemExit(3),
        "generator_exit": GeneratorExit("generator exit"),
        "cancelled": asyncio.CancelledError("cancelled by the task"),
    }[mode]


def note_base_on_error(exc: BaseException) -> None:
    note("on_error", type=type(exc).__qualname__)


@hy.task(max_retries=0, on_error=note_base_on_error)
def raise_base(arg: Mode) -> None:
    note("start", mode=arg.mode)
    raise _base_exception(arg.mode)


@hy.task(max_retries=0, on_error=note_base_on_error)
async def araise_base(arg: Mode) -> None:
    note("start", mode=arg.mode)
    await asyncio.sleep(0)
    if arg.mode == "self_cancel":
        task = asyncio.current_task()
        assert task is not None
        task.cancel("the task cancelled itself")
        await asyncio.sleep(10)
    raise _base_exception(arg.mode)


def interrupting_on_error(exc: BaseException) -> None:
    note("on_error", type=type(exc).__qualname__)
    raise KeyboardInterrupt("from on_error")


@hy.task(max_retries=0, on_error=interrupting_on_error)
def fail_with_interrupting_on_error() -> None:
    """Fails; its on_error raises KeyboardInterrupt."""
    note("start")
    raise RuntimeError("plain failure")


@hy.task
def pid() -> int:
    return os.getpid()


@hy.task
async def apid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


# ------------------------------------------------------------------ standard streams


class Streams(BaseModel):
    mode: str
    path: str = ""


_kept: list[Any] = []  # files a task keeps open across tasks


@hy.task
def break_streams(arg: Streams) -> int:
    """Leave the standard streams broken in one of several ways, then complete."""
    note("start", mode=arg.mode)
    if arg.mode == "os_close":
        for fd in (0, 1, 2):
            os.close(fd)
    elif arg.mode == "closerange":
        os.closerange(0, 3)
    elif arg.mode == "objects_close":
        sys.stdout.close()
        sys.stderr.close()
        sys.stdin.close()
    elif arg.mode == "objects_replace":
        sys.stdout = open(os.devnull, "w")  # left behind on purpose
        sys.stderr = None
    elif arg.mode == "reuse_fd":
        # fd 1 closed, then a file the task keeps lands on it: later prints would go there
        os.close(1)
        kept = open(arg.path, "w")  # kept on purpose
        assert kept.fileno() == 1, kept.fileno()
        _kept.append(kept)
    else:
        raise ValueError(arg.mode)
    return os.getpid()


class Shout(BaseModel):
    text: str


@hy.task
def shout(arg: Shout) -> int:
    """Print to stdout and stderr (flushed), and from a child process on the inherited fd 1."""
    print(f"stdout {arg.text}", flush=True)
    print(f"stderr {arg.text}", file=sys.stderr, flush=True)
    subprocess.run(["echo", f"child {arg.text}"], check=True)
    return os.getpid()


# ---------------------------------------------------------------------------- children


class Spawn(BaseModel):
    pidfile: str
    detach: bool = False
    then: str = "return"  # or "hang" (past the timeout), "exit" (the executor dies)


def _spawn(arg: Spawn) -> int:
    child = subprocess.Popen(["sleep", "600"], start_new_session=arg.detach)
    with open(arg.pidfile + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(arg.pidfile + ".tmp", arg.pidfile)
    note("spawned", child=child.pid)
    if arg.then == "hang":
        time.sleep(600)
    elif arg.then == "exit":
        os._exit(5)
    return child.pid


def lead_a_group_and_leave_a_child(pidfile: str, then: str) -> None:
    """A stand-in executor for `multiprocessing` (not a task): it leads a session and process
    group, as executors do, starts a child in it, writes the child's pid, then exits ("exit")
    or waits to be killed ("wait")."""
    os.setsid()
    child = subprocess.Popen(["sleep", "600"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(pidfile + ".tmp", pidfile)
    if then == "wait":
        time.sleep(600)
    os._exit(0)


@hy.task(max_retries=0)
def spawn_child(arg: Spawn) -> int:
    return _spawn(arg)


@hy.task(max_retries=0, timeout_seconds=1)
def spawn_child_with_timeout(arg: Spawn) -> int:
    return _spawn(arg)


@hy.task(max_retries=0, timeout_seconds=0.5, on_error=note_on_error)
def hang_with_unprintable_on_error() -> None:
    """Timed out by the worker process, which then calls the hostile on_error itself."""
    time.sleep(600)
