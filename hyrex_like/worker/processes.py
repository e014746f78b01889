"""Executor processes as seen from outside: kill one with its process group, see that one has
exited (neither reaps it), and name a thread or process for ps and top. Used by both sides."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from typing import Any


def set_os_thread_name(name: bytes) -> None:
    """Name the calling thread for ps, top -H and /proc (Linux; 15 bytes at most)."""
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):  # pragma: no cover
            pass


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def kill_executor_group(process: Any) -> bool:
    """SIGKILL an executor (a `multiprocessing` process) and every process left in its group,
    if its pid is still ours; returns whether it was (and so whether anything was sent).

    An executor's pid, which is its group's id, is ours until the executor is reaped: joined,
    read through ``exitcode``, or reaped by multiprocessing itself, which waits for every dead
    child it knows whenever it starts another process (``Process.start``). From then on the
    kernel may give the id to any new process or group, so nothing is sent: the parent kills
    each executor's group before the reap (`Spawner.kill`, `ExecutorPool.reap`, and
    `Spawner.spawn` for the executors that died meanwhile), and calling this again, or
    after the reap, does nothing. No cost per task: it runs when an executor is killed or found
    dead, with one ``waitid`` call to see that no other thread reaped it."""
    popen = process._popen
    if popen is None or popen.returncode is not None:  # never started, or reaped
        return False
    try:  # alive, or dead and not yet waited for: the pid is still ours (not reaped here)
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by a wait() we did not make: no longer ours
        return False
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:  # no such group: it died, or is killed, before it made its own
        try:
            os.kill(process.pid, signal.SIGKILL)  # a zombie's pid takes it harmlessly
        except OSError:
            pass
    return True


def executor_exited(process: Any) -> bool:
    """Whether an executor has exited, without reaping it (see `kill_executor_group`).

    One ``waitid`` call, as cheap as the ``waitpid`` behind ``process.exitcode``."""
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped (multiprocessing reaps dead children at starts)
        return True


# -- an executor's own set-up (called first thing in the executor process) --


def die_with_parent(name: bytes) -> None:
    """Ask Linux to SIGKILL us if the dispatcher dies, so no task runs unsupervised, and name
    the process (a forked executor's command line is its parent's)."""
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
    set_os_thread_name(name)


def lead_own_session() -> None:
    """Become the leader of a new session and process group, before any task runs.

    What a worker owns is its executors' process groups: the processes its tasks start stay in
    their executor's group unless they leave it on purpose (``start_new_session=True``,
    ``process_group=0``, ``setsid``), and `kill_executor_group` kills the group whenever the
    parent kills or stops an executor. A session rather than only a group: with no controlling
    terminal, a task that touches the terminal is never stopped by job control (SIGTTIN,
    SIGTTOU) as a background group would be. The terminal's Ctrl-C now reaches the parent
    only, which stops its executors itself (they ignore SIGINT anyway)."""
    try:
        os.setsid()
    except OSError:  # pragma: no cover - already a group leader: not started by a dispatcher
        pass
