"""Async tasks side by side: ``run-worker --async-concurrency K`` runs up to K ``async def``
tasks at once in each executor, each with its own context; a timeout or a cancel ends that
coroutine only; a coroutine that never yields gets its executor killed; sync tasks still run
alone. Real workers, a real database (tests/apps/async_app.py)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hyrex_like.errors import InvalidTaskOption

from .helpers import Worker, done, query, read_events, wait_until


@pytest.fixture
def aapp(app_registry: Callable[[Any], Any]) -> Any:
    from .apps import async_app

    app_registry(async_app.hy)
    async_app.hy.migrate()
    return async_app


@pytest.fixture
def aworker(worker: Callable[..., Worker], out_dir: Path) -> Callable[..., Worker]:
    def start(*args: str) -> Worker:
        return worker("async_app:hy", *args, env={"HYREX_TEST_OUT": str(out_dir)})

    return start


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = top = 0
    for _, step in edges:  # (an end sorts before a start at the same instant)
        now += step
        top = max(top, now)
    return top


def run_intervals(
    database_url: str, schema: str, ids: list[uuid.UUID]
) -> list[tuple[float, float]]:
    rows = query(
        database_url,
        schema,
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8"
        " FROM task_run WHERE task_id = ANY(%s) AND status = 'completed'",
        (ids,),
    )
    return [(a, b) for a, b in rows]


def test_a_hundred_async_tasks_overlap_on_one_executor(aapp, aworker, database_url, schema):
    handles = [aapp.nap.send(i) for i in range(100)]
    w = aworker("--processes", "1", "--async-concurrency", "50")
    for h in handles:
        assert done(h, 60).status == "completed", h.task_runs
    intervals = run_intervals(database_url, schema, [h.id for h in handles])
    assert len(intervals) == 100
    assert most_at_once(intervals) >= 40
    assert w.stop() == 0


def test_without_async_concurrency_async_tasks_run_one_at_a_time(
    aapp, aworker, database_url, schema
):
    # the measure above fails without the option: K defaults to 1
    handles = [aapp.nap.send(i) for i in range(10)]
    w = aworker("--processes", "1")
    for h in handles:
        assert done(h, 60).status == "completed", h.task_runs
    assert most_at_once(run_intervals(database_url, schema, [h.id for h in handles])) == 1
    assert w.stop() == 0


def test_context_is_per_task_under_concurrency(aapp, aworker):
    handles = [aapp.whoami.send(i) for i in range(40)]
    w = aworker("--processes", "1", "--async-concurrency", "20")
    for n, h in enumerate(handles):
        assert done(h, 60).status == "completed", h.task_runs
        assert h.result == {"n": n, "before": str(h.id), "after": str(h.id)}
    assert w.stop() == 0


def test_per_task_cap_holds(aapp, aworker, database_url, schema):
    handles = [aapp.capped.send(i) for i in range(12)]
    w = aworker("--processes", "1", "--async-concurrency", "50")
    for h in handles:
        assert done(h, 60).status == "completed", h.task_runs
    top = most_at_once(run_intervals(database_url, schema, [h.id for h in handles]))
    assert 2 <= top <= 3
    assert w.stop() == 0


def test_sync_tasks_still_run_one_at_a_time(aapp, aworker, database_url, schema):
    handles = [aapp.sync_step.send(i) for i in range(10)] + [aapp.nap.send(i) for i in range(10)]
    w = aworker("--processes", "1", "--async-concurrency", "20")
    for h in handles:
        assert done(h, 60).status == "completed", h.task_runs
    sync = run_intervals(database_url, schema, [h.id for h in handles[:10]])
    assert most_at_once(sync) == 1
    everything = run_intervals(database_url, schema, [h.id for h in handles])
    for a, b in sync:  # nothing else ran while a sync task did
        assert all(not (x < b and a < y) for x, y in everything if (x, y) != (a, b))
    assert w.stop() == 0


def test_a_timeout_cancels_only_that_coroutine(aapp, aworker, out_dir):
    siblings = [aapp.slow_sibling.send(i) for i in range(3)]
    late = aapp.sleeps_long.send(0)
    w = aworker("--processes", "1", "--async-concurrency", "10")
    assert done(late, 30).status == "failed"
    [run] = late.task_runs
    assert run.status == "timed_out"
    assert run.error_type == "TaskTimeout" and "timeout of 0.5s" in run.error_message
    pids = {done(h, 30).result for h in siblings}
    assert all(h.status == "completed" for h in siblings)
    [pid] = pids  # every sibling ran in the one executor, which was never replaced
    assert w.executor_pids() == [pid]
    assert {e["pid"] for e in read_events(out_dir, "sleeps_long")} == {pid}
    assert w.stop() == 0


def test_a_coroutine_that_does_not_yield_gets_its_executor_killed(aapp, aworker, out_dir):
    blocker = aapp.blocks.send(0)
    w = aworker("--processes", "1", "--async-concurrency", "10")
    assert done(blocker, 30).status == "failed"
    [run] = blocker.task_runs
    assert run.status == "timed_out"
    assert run.error_type == "TaskTimeout" and "event loop did not respond" in run.error_message
    [event] = read_events(out_dir, "blocks")
    wait_until(lambda: w.executor_pids() and w.executor_pids() != [event["pid"]], 30)
    after = aapp.nap.send(1)  # a fresh executor serves on
    assert done(after, 30).status == "completed"
    assert w.stop() == 0


def test_cancel_of_one_running_async_task_leaves_its_siblings(aapp, aworker, out_dir):
    victim = aapp.waits.send(0)
    siblings = [aapp.slow_sibling.send(i) for i in range(3)]
    w = aworker("--processes", "1", "--async-concurrency", "10")
    wait_until(
        lambda: read_events(out_dir, "waits") and len(read_events(out_dir, "slow_sibling")) == 3, 30
    )
    assert victim.cancel()
    assert done(victim, 15).status == "canceled"
    assert [r.status for r in victim.task_runs] == ["canceled"]
    pids = {done(h, 30).result for h in siblings}
    assert all(h.status == "completed" for h in siblings)
    assert pids == {read_events(out_dir, "waits")[0]["pid"]}  # the same executor throughout
    assert w.executor_pids() == list(pids)
    assert w.stop() == 0


def test_sigterm_lets_running_coroutines_finish_and_hands_back_the_rest(
    aapp, aworker, out_dir, database_url, schema
):
    running = [aapp.gated.send(i) for i in range(3)]
    w = aworker("--processes", "1", "--async-concurrency", "3", "--prefetch", "8")
    wait_until(lambda: len(read_events(out_dir, "gated")) == 3, 30)
    queued = [aapp.nap.send(i) for i in range(3)]
    ids = [h.id for h in queued]

    def statuses() -> set[str]:
        rows = query(database_url, schema, "SELECT status FROM task WHERE id = ANY(%s)", (ids,))
        return {s for (s,) in rows}

    wait_until(lambda: statuses() == {"running"}, 30, what="the worker to hold the naps")
    w.signal(signal.SIGTERM)
    # handed back while the running coroutines still run (they wait for the file)
    wait_until(lambda: statuses() == {"queued"}, 30, what="the naps to be handed back")
    (out_dir / "release").touch()
    assert w.proc.wait(60) == 0  # (a second SIGTERM would not wait for them)
    assert all(done(h, 5).status == "completed" for h in running)
    assert statuses() == {"queued"}
    runs = query(
        database_url, schema, "SELECT count(*) FROM task_run WHERE task_id = ANY(%s)", (ids,)
    )
    assert runs == [(0,)]


def test_a_kill_loses_the_siblings_and_they_run_again(aapp, aworker, out_dir):
    siblings = [aapp.lost_once.send(i) for i in range(3)]
    blocker = aapp.blocks.send(0)
    w = aworker("--processes", "1", "--async-concurrency", "10")
    assert done(blocker, 30).status == "failed"
    assert [r.status for r in blocker.task_runs] == ["timed_out"]
    for n, h in enumerate(siblings):
        assert done(h, 30).status == "completed", h.task_runs
        assert h.result == n
        runs = h.task_runs
        assert [(r.attempt_number, r.status) for r in runs] == [(1, "lost"), (2, "completed")]
        assert runs[0].error_type == "ExecutorLost" and "blocks" in runs[0].error_message
    [killed] = {e["pid"] for e in read_events(out_dir, "blocks")}
    firsts = [e for e in read_events(out_dir, "lost_once") if e["attempt"] == 1]
    assert {e["pid"] for e in firsts} == {killed}
    assert w.stop() == 0


def test_a_coroutine_that_swallows_its_timeout_is_timed_out(aapp, aworker, out_dir):
    h = aapp.swallows_cancel.send(0)
    w = aworker("--processes", "1", "--async-concurrency", "4")
    assert done(h, 30).status == "failed"
    [run] = h.task_runs
    assert run.status == "timed_out" and run.error_type == "TaskTimeout"
    assert w.executor_pids() == [read_events(out_dir, "swallows_cancel")[0]["pid"]]
    assert w.stop() == 0


def test_an_async_on_error_runs_to_its_end_before_the_executor_stops(aapp, aworker, out_dir):
    h = aapp.fails.send(0)
    w = aworker("--processes", "1", "--async-concurrency", "4")
    assert done(h, 30).status == "failed"
    assert w.stop() == 0  # while on_error still awaits
    assert [e["type"] for e in read_events(out_dir, "on_error")] == ["ValueError"]
    assert "on_error_failed" in w.log() and "on_error broke after its first await" in w.log()


def test_async_concurrency_is_checked_at_decoration(aapp):
    with pytest.raises(InvalidTaskOption, match="async def tasks only"):

        @aapp.hy.task(name="plain_capped", async_concurrency=2)
        def plain(n: int) -> int:
            return n

    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidTaskOption, match="async_concurrency"):

            @aapp.hy.task(name=f"bad_{abs(hash(bad))}", async_concurrency=bad)
            async def coro(n: int) -> int:
                return n


def test_the_worker_option_is_checked(registry):
    from hyrex_like.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="async_concurrency"):
        registry.worker(async_concurrency=0)


def test_progress_of_concurrent_tasks_is_each_their_own(aapp, aworker, out_dir):
    handles = [aapp.reports.send(i) for i in range(8)]
    w = aworker("--processes", "1", "--async-concurrency", "8")
    # sampled while they run side by side (each waits, after its first value, for "go")
    wait_until(
        lambda: all(h.refresh().progress == {"n": n, "step": 1} for n, h in enumerate(handles)), 30
    )
    (out_dir / "go").touch()
    for n, h in enumerate(handles):
        assert done(h, 30).status == "completed", h.task_runs
        assert h.progress == {"n": n, "step": 2}  # the last value, written with the result
    assert w.stop() == 0
