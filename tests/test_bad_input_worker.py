"""Hostile task bodies, the worker-side companion of test_bad_input.py.

What only the worker can see: the attempt fails with the task's own error recorded, and the
executor stays healthy (the same process runs the next task), or, for children a task leaves
running, the worker cleans up what it owns when it stops or kills an executor.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Worker, done, read_events, wait_until


@pytest.fixture
def happ(app_registry: Callable[[Any], Any]) -> Any:
    """tests/apps/hostile_app.py, its registry bound to this test's schema (for sending)."""
    from .apps import hostile_app

    app_registry(hostile_app.hy)
    return hostile_app


@pytest.fixture
def hworker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    """Start `run-worker hostile_app:hy --processes 1 ARGS`, events going to ``out_dir``."""

    def start(*args: str) -> Worker:
        return worker(
            "hostile_app:hy",
            "--processes",
            "1",
            "--poll-interval",
            "0.1",
            *args,
            env={"HYREX_TEST_OUT": str(out_dir)},
        )

    return start


def _only_run(handle: Any) -> Any:
    [run] = handle.task_runs
    return run


def _events_pids(out_dir: Path, kind: str) -> set[int]:
    return {e["pid"] for e in read_events(out_dir, kind)}


def _events(w: Worker) -> list[dict[str, Any]]:
    """A ``--log-format json`` worker's log events (lines a task printed left out)."""
    return [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]


def _no_lost_executor(w: Worker) -> None:
    events = {e["event"] for e in _events(w)}
    assert "task_lost" not in events and "executor_restarted" not in events, events


# ------------------------------------------------------- exceptions that cannot be printed


UNPRINTABLE = {
    "str_raises": "<exception str() failed: ValueError: __str__ refuses>",
    "str_returns_int": "<exception str() failed: TypeError: __str__ returned non-string "
    "(type int)>",
    "str_raises_base": "<exception str() failed: KeyboardInterrupt: from __str__>",
    "str_raises_unprintable": "<exception str() failed: Unprintable: <str() failed>>",
}


def test_an_exception_whose_str_raises_is_recorded_with_its_type_and_traceback(
    happ, hworker, out_dir
):
    handles = {mode: happ.unprintable.send({"mode": mode}) for mode in UNPRINTABLE}
    after = happ.pid.send()
    w = hworker("--log-format", "json")
    executor = done(after).result
    for mode, handle in handles.items():
        run = _only_run(done(handle))
        assert (run.status, run.error_type) == ("failed", "Unprintable"), mode
        assert run.error_message == UNPRINTABLE[mode]
        assert "hostile_app.py" in run.traceback and "raise Unprintable(arg.mode)" in run.traceback
        assert run.traceback.rstrip().endswith("Unprintable: <exception str() failed>")
    # the same executor ran them all and the task after them
    assert _events_pids(out_dir, "start") == {executor}
    # on_error was called with the real exception; it raised another unprintable one: logged
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["Unprintable"] * 4
    failed = [e for e in _events(w) if e["event"] == "on_error_failed"]
    assert len(failed) == 4
    assert {e["error"] for e in failed} == {
        "Unprintable: <exception str() failed: ValueError: __str__ refuses>"
    }
    _no_lost_executor(w)
    assert w.stop() == 0


def test_an_unprintable_error_from_on_error_in_the_worker_process_is_logged_not_fatal(
    happ, hworker, out_dir
):
    # timeouts (and lost executors) call on_error in the worker process, not an executor
    handle = happ.hang_with_unprintable_on_error.send()
    w = hworker("--log-format", "json")
    assert _only_run(done(handle)).status == "timed_out"
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["TaskTimeout"]
    wait_until(
        lambda: [e for e in _events(w) if e["event"] == "on_error_failed"], 10, what="the log"
    )
    [failed] = [e for e in _events(w) if e["event"] == "on_error_failed"]
    assert failed["error"] == "Unprintable: <exception str() failed: ValueError: __str__ refuses>"
    assert done(happ.pid.send()).status == "completed"
    assert w.proc.poll() is None
    assert w.stop() == 0


# ------------------------------------------------------------- BaseException from task code


BASE_EXCEPTIONS = {
    "keyboard_interrupt": ("KeyboardInterrupt", "pressed by the task"),
    "custom_base": ("CustomBase", "custom base"),
    "system_exit": ("SystemExit", "3"),  # as before: a failed attempt, never a stopped worker
    "generator_exit": ("GeneratorExit", "generator exit"),
    "cancelled": ("CancelledError", "cancelled by the task"),
}


def test_keyboard_interrupt_and_other_base_exceptions_fail_the_attempt_not_the_executor(
    happ, hworker, out_dir
):
    handles = {mode: happ.raise_base.send({"mode": mode}) for mode in BASE_EXCEPTIONS}
    interrupting_handler = happ.fail_with_interrupting_on_error.send()
    after = happ.pid.send()
    w = hworker("--log-format", "json")
    executor = done(after).result
    for mode, handle in handles.items():
        run = _only_run(done(handle))
        assert (run.status, run.error_type, run.error_message) == (
            "failed",
            *BASE_EXCEPTIONS[mode],
        ), mode
        assert "raise _base_exception(arg.mode)" in run.traceback
    run = _only_run(done(interrupting_handler))
    assert (run.status, run.error_type) == ("failed", "RuntimeError")
    failed = [e for e in _events(w) if e["event"] == "on_error_failed"]
    assert [e["error"] for e in failed] == ["KeyboardInterrupt: from on_error"]
    assert sorted(e["type"] for e in read_events(out_dir, "on_error")) == sorted(
        [t for t, _ in BASE_EXCEPTIONS.values()] + ["RuntimeError"]
    )
    assert _events_pids(out_dir, "start") == {executor}
    _no_lost_executor(w)
    assert w.stop() == 0


ASYNC_BASE_EXCEPTIONS = {
    **BASE_EXCEPTIONS,
    "self_cancel": ("CancelledError", "the task cancelled itself"),
}


def test_async_tasks_raising_base_exceptions_fail_the_attempt_and_the_loop_goes_on(
    happ, hworker, out_dir
):
    handles = {mode: happ.araise_base.send({"mode": mode}) for mode in ASYNC_BASE_EXCEPTIONS}
    after = happ.apid.send()
    w = hworker("--log-format", "json")
    executor = done(after).result  # the executor's event loop still runs coroutines
    for mode, handle in handles.items():
        run = _only_run(done(handle))
        assert (run.status, run.error_type, run.error_message) == (
            "failed",
            *ASYNC_BASE_EXCEPTIONS[mode],
        ), mode
    assert _events_pids(out_dir, "start") == {executor}
    _no_lost_executor(w)
    assert w.stop() == 0


# ------------------------------------------------------------------ standard streams


@pytest.mark.parametrize("mode", ["os_close", "closerange", "objects_close", "objects_replace"])
def test_a_task_that_breaks_the_standard_streams_does_not_break_the_next_one(
    happ, hworker, out_dir, mode
):
    breaker = happ.break_streams.send({"mode": mode})
    after = happ.shout.send({"text": f"after-{mode}"})
    w = hworker("--log-format", "json")
    assert done(breaker).status == "completed"
    assert done(after).status == "completed", after.last_error
    assert after.result == breaker.result  # the same executor
    # and what it printed reached the worker's own output, from Python and from a child
    log = w.log()
    for stream in ("stdout", "stderr", "child"):
        assert f"{stream} after-{mode}" in log
    [warning] = [e for e in _events(w) if e["event"] == "standard_streams_restored"]
    assert warning["task_id"] == str(breaker.id) and warning["repaired"]
    _no_lost_executor(w)
    assert w.stop() == 0


def test_a_file_a_task_opened_on_a_closed_stdout_does_not_receive_later_prints(
    happ, hworker, out_dir
):
    kept = out_dir / "kept.txt"
    breaker = happ.break_streams.send({"mode": "reuse_fd", "path": str(kept)})
    after = happ.shout.send({"text": "after-reuse"})
    w = hworker()
    assert done(breaker).status == "completed", breaker.last_error
    assert done(after).status == "completed", after.last_error
    assert after.result == breaker.result
    assert "stdout after-reuse" in w.log() and "child after-reuse" in w.log()
    assert "after-reuse" not in kept.read_text()
    assert w.stop() == 0


# ---------------------------------------------------------------------------- children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


@pytest.fixture
def children() -> Iterator[list[int]]:
    """Pids of processes a test's tasks started; any still alive afterwards are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _spawned(happ: Any, task: Any, out_dir: Path, name: str, **options: Any) -> tuple[Any, Path]:
    pidfile = out_dir / f"{name}.pid"
    return task.send({"pidfile": str(pidfile), **options}), pidfile


def _child_pid(pidfile: Path, children: list[int]) -> int:
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 30, what=pidfile))
    children.append(pid)
    return pid


def test_stopping_a_worker_kills_the_children_its_tasks_left_running(
    happ, hworker, out_dir, children
):
    handle, pidfile = _spawned(happ, happ.spawn_child, out_dir, "child")
    w = hworker()
    assert done(handle).status == "completed"
    child = _child_pid(pidfile, children)
    [executor] = w.executor_pids()
    # each executor leads a session and process group of its own; the child is in it
    assert _stat(executor)[2:4] == [str(executor), str(executor)]
    assert _stat(child)[2] == str(executor)
    assert _alive(child)
    assert w.stop() == 0
    wait_until(lambda: not _alive(child), 10, what=f"child {child} of a task to be killed")


def test_a_timeout_kills_the_children_of_the_timed_out_task(happ, hworker, out_dir, children):
    handle, pidfile = _spawned(happ, happ.spawn_child_with_timeout, out_dir, "t", then="hang")
    w = hworker()
    child = _child_pid(pidfile, children)
    assert done(handle).status == "failed"
    assert _only_run(handle).status == "timed_out"
    wait_until(lambda: not _alive(child), 10, what=f"child {child} of a timed-out task")
    # the replacement executor (spawned, not forked) owns its children the same way
    again, pidfile2 = _spawned(happ, happ.spawn_child, out_dir, "again")
    assert done(again).status == "completed"
    child2 = _child_pid(pidfile2, children)
    assert w.proc.poll() is None
    assert w.stop() == 0
    wait_until(lambda: not _alive(child2), 10, what=f"child {child2} of the replacement")


def test_an_executor_that_dies_takes_its_tasks_children_with_it(happ, hworker, out_dir, children):
    handle, pidfile = _spawned(happ, happ.spawn_child, out_dir, "crash", then="exit")
    w = hworker()
    assert done(handle).status == "failed"
    assert _only_run(handle).status == "lost"
    child = _child_pid(pidfile, children)
    wait_until(lambda: not _alive(child), 10, what=f"child {child} of a dead executor")
    assert w.stop() == 0


def test_a_child_detached_on_purpose_outlives_the_worker(happ, hworker, out_dir, children):
    detached, pidfile = _spawned(happ, happ.spawn_child, out_dir, "detached", detach=True)
    attached, pidfile2 = _spawned(happ, happ.spawn_child, out_dir, "attached")
    w = hworker()
    assert done(detached).status == "completed" and done(attached).status == "completed"
    free, owned = _child_pid(pidfile, children), _child_pid(pidfile2, children)
    assert w.stop() == 0
    # the worker killed what it owns before it exited; the detached child is not its own
    wait_until(lambda: not _alive(owned), 10, what=f"attached child {owned} to be killed")
    assert _alive(free)


def test_ctrl_c_to_the_workers_process_group_still_stops_its_executors(
    happ, hworker, out_dir, children
):
    # A terminal sends Ctrl-C's SIGINT to its foreground process group: the worker's, which
    # the executors have left. The worker must still stop them, and what their tasks started.
    handle, pidfile = _spawned(happ, happ.spawn_child, out_dir, "child")
    w = hworker()
    assert done(handle).status == "completed"
    child = _child_pid(pidfile, children)
    executors = w.executor_pids()
    assert executors
    os.killpg(w.pid, signal.SIGINT)  # the test's worker runs in a session of its own
    assert w.proc.wait(60) == 0
    for pid in [*executors, child]:
        wait_until(lambda pid=pid: not _alive(pid), 10, what=f"process {pid} to be gone")


# ------------------------------------------ a group is killed only while its id is the worker's


def _killed(pid: int) -> bool:
    """Whether ``pid`` was sent SIGKILL, as /proc shows it the moment ``kill`` returns: gone,
    a zombie, exiting (PF_EXITING), or with SIGKILL pending. No waiting either way."""
    try:
        fields = _stat(pid)
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except FileNotFoundError:
        return True
    if fields[0] in ("Z", "X") or int(fields[6]) & 0x4:  # fields[6]: flags; 0x4 PF_EXITING
        return True
    bit = 1 << (signal.SIGKILL - 1)
    return any(int(status[key], 16) & bit for key in ("SigPnd", "ShdPnd"))


def _stand_in_executor(pidfile: Path, then: str) -> Any:
    """A real process that leads its own group, as an executor does, with a child in it."""
    import multiprocessing

    from .apps import hostile_app

    process = multiprocessing.get_context("spawn").Process(
        target=hostile_app.lead_a_group_and_leave_a_child, args=(str(pidfile), then), daemon=True
    )
    process.start()
    return process


def test_an_executor_group_is_killed_while_its_pid_is_ours_and_never_after_the_reap(
    out_dir, children
):
    from hyrex_like.worker.processes import kill_executor_group

    executor = _stand_in_executor(out_dir / "alive.pid", "wait")
    child = _child_pid(out_dir / "alive.pid", children)
    assert _stat(child)[2] == str(executor.pid)
    assert not _killed(child)
    assert kill_executor_group(executor) is True  # alive: its id is its own
    assert _killed(child)
    executor.join(30)
    assert executor.exitcode == -signal.SIGKILL
    assert kill_executor_group(executor) is False  # again, once reaped: nothing is sent


def test_no_signal_goes_to_the_group_id_of_an_executor_already_reaped(out_dir, children):
    """Once reaped, an executor's pid (its group's id) may be given to another process group;
    a second kill (a shutdown whose grace period ran out, a refused start) must send nothing.
    The id is kept observable here: a child left in the reaped executor's group holds it."""
    from hyrex_like.worker.processes import kill_executor_group

    executor = _stand_in_executor(out_dir / "left.pid", "exit")
    child = _child_pid(out_dir / "left.pid", children)
    executor.join(30)
    assert executor.exitcode == 0  # exited by itself, and reaped
    assert _stat(child)[2] == str(executor.pid)  # the group lives on in the child
    assert kill_executor_group(executor) is False
    assert not _killed(child), "a group was signalled after its leader was reaped"


def test_replacing_dead_executors_kills_every_dead_ones_group_before_any_reap(
    happ, out_dir, children
):
    """Starting a process makes multiprocessing reap every dead child it knows, so replacing
    the first of two dead executors would reap the second before its group was killed (after
    which its id is no longer the worker's to signal): every dead executor's group is killed
    before a replacement starts."""
    import multiprocessing
    import multiprocessing.connection as mpc

    from hyrex_like.dispatcher import Dispatcher, WorkerOptions
    from hyrex_like.worker.pipe import ExecutorHandle

    d = Dispatcher(happ.hy, "tests.apps.hostile_app:hy", WorkerOptions(processes=2))
    pidfiles = [out_dir / f"dead-{i}.pid" for i in range(2)]
    for i, pidfile in enumerate(pidfiles):
        ours, theirs = multiprocessing.get_context("spawn").Pipe(duplex=True)
        theirs.close()
        ex = ExecutorHandle(i, _stand_in_executor(pidfile, "exit"), ours)
        ex.ready = True
        d.pool.executors.append(ex)
    try:
        left = [_child_pid(pidfile, children) for pidfile in pidfiles]
        exited = [ex.process.sentinel for ex in d.pool.executors]  # readable at exit, not reaped
        while exited:
            ready = mpc.wait(exited, 30)
            assert ready, "the stand-in executors did not exit"
            exited = [s for s in exited if s not in ready]
        # A sentinel reads as closed while the process is still exiting, a moment before it is
        # a zombie that waitid sees: wait (without reaping) until both are.
        for ex in d.pool.executors:
            os.waitid(os.P_PID, ex.process.pid, os.WEXITED | os.WNOWAIT)
        d.pool.reap()
        assert d.stats["executor_restarts"] == 2
        for pid in left:
            assert _killed(pid), f"child {pid} of a dead executor survived its replacement"
    finally:
        for ex in d.pool.executors:
            d.pool.spawner.kill(ex)
