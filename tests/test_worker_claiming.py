"""What a worker claims, in which order, how much at once, and how fast it wakes up."""

from __future__ import annotations

import re
import threading
import time

from .helpers import count, done, query, read_events, wait_until


def test_worker_never_claims_a_task_name_it_has_not_registered(
    wapp, registry, app_worker, database_url, schema
):
    @registry.task
    def not_in_worker_app(n: int) -> int:
        return n

    stranger = not_in_worker_app.send(1)
    mine = wapp.record.send({"n": 1})
    w = app_worker("--processes", "1")
    assert done(mine, 30).status == "completed"
    later = wapp.record.send({"n": 2})  # one more claim round after the stranger was visible
    assert done(later, 30).status == "completed"
    stranger.refresh()
    assert (stranger.status, stranger.attempt_count, stranger.task_runs) == ("queued", 0, [])
    assert w.stop() == 0


def test_worker_runs_higher_priority_first_then_oldest(wapp, app_worker, out_dir):
    priorities = [1, 5, 10, 5, 1, 10, 3, 5, 10, 1]
    handles = [wapp.record.with_config(priority=p).send({"n": i}) for i, p in enumerate(priorities)]
    w = app_worker("--processes", "1", "--prefetch", "1")
    for h in handles:
        done(h, 30)
    order = [e["n"] for e in read_events(out_dir, "record")]
    expected = [i for i, _ in sorted(enumerate(priorities), key=lambda ip: (-ip[1], ip[0]))]
    assert order == expected
    assert w.stop() == 0


def test_worker_never_has_more_running_than_processes_times_prefetch(
    wapp, app_worker, database_url, schema
):
    wapp.nap.send_many([{"n": i, "seconds": 0.05} for i in range(40)])
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(count(database_url, schema, "status = 'running'"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        w = app_worker("--processes", "2", "--prefetch", "2")
        wait_until(lambda: count(database_url, schema, "status = 'completed'") == 40, 60)
    finally:
        stop.set()
        sampler.join()
    assert max(seen) == 4, f"running counts seen: {sorted(set(seen))}"
    open_runs = count(database_url, schema, "status = 'running'", table="task_run")
    assert open_runs == 0
    assert w.stop() == 0


def test_idle_worker_starts_a_new_task_within_milliseconds_via_notify(
    wapp, app_worker, database_url, schema
):
    # With a 30 s poll, only LISTEN/NOTIFY can explain a start within half a second.
    w = app_worker("--processes", "1", "--poll-interval", "30")
    done(wapp.record.send({"n": 0}), 30)  # the worker is up and idle
    delays = []
    for n in range(1, 6):
        handle = done(wapp.record.send({"n": n}), 10)
        run = handle.task_runs[0]
        delays.append((run.started_at - handle.row.created_at).total_seconds())
    assert max(delays) < 0.5, delays
    assert w.stop() == 0


def test_sends_sharing_a_wake_up_all_start_without_the_poll(wapp, app_worker):
    # Sends closer together than the wake interval share one wake-up, which goes out when
    # the interval is over: the tasks sent after the worker's last claim must not wait for
    # the 30 s poll.
    w = app_worker("--processes", "1", "--poll-interval", "30")
    done(wapp.record.send({"n": 0}), 30)  # the worker is up and idle
    handles = [wapp.record.send({"n": n}) for n in range(1, 51)]  # the default 5 ms interval
    for handle in handles:
        done(handle, 10)
    wapp.hy.configure(wake_interval=1.0)
    done(wapp.record.send({"n": 51}), 10)  # a quiet spell: its wake-up goes out at once
    late = done(wapp.record.send({"n": 52}), 10)  # the worker is idle again by now
    waited = (late.task_runs[0].started_at - late.row.created_at).total_seconds()
    assert 0.1 < waited < 5, waited  # the shared wake-up, up to 1 s after the previous one
    assert w.stop() == 0


def test_poll_picks_up_a_task_whose_run_after_has_come(wapp, app_worker, database_url, schema):
    handle = wapp.record.send({"n": 1})
    # Moving run_after sends no notification: only the poll can find the task when it is due.
    [(due,)] = query(
        database_url,
        schema,
        "UPDATE task SET run_after = now() + interval '4 seconds' WHERE id = %s "
        "RETURNING run_after",
        (handle.id,),
    )
    w = app_worker("--processes", "1", "--poll-interval", "0.2")
    wait_until(lambda: "worker_started" in w.log(), 30)
    assert handle.refresh().status == "queued"  # not before its time
    done(handle)
    run = handle.task_runs[0]
    assert run.started_at >= due
    assert (run.started_at - due).total_seconds() < 1.5
    assert w.stop() == 0


def test_retry_backoff_is_respected_and_picked_up_when_due(wapp, app_worker):
    handle = wapp.fail_twice.send({"n": 7})
    started = time.monotonic()
    w = app_worker("--processes", "1")
    done(handle, 30)
    assert handle.status == "completed", handle.task_runs
    runs = handle.task_runs
    assert [r.status for r in runs] == ["failed", "failed", "completed"]
    for earlier, later in zip(runs, runs[1:], strict=False):
        gap = (later.started_at - earlier.finished_at).total_seconds()
        assert 1.0 <= gap < 2.5, gap  # backoff 1 s; picked up soon after it is due
    assert time.monotonic() - started < 20
    assert w.stop() == 0


def _plan_nodes(plan: dict) -> list[dict]:  # type: ignore[type-arg]
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


def test_finishing_and_giving_back_a_batch_look_up_each_task_on_a_small_table(
    registry, database_url, schema
):
    """Finishing (or handing back) 1,000 attempts is one primary-key lookup per attempt, also
    on a table of a few thousand rows, where the planner once preferred to scan every task and
    re-read the whole batch for each one (~250 ms per 1,000 rows instead of ~10)."""
    import uuid as _uuid

    import psycopg

    from hyrex_like.db import WORKER_PLANNER_OPTIONS, FinishedRow, WorkerQueries, q

    @registry.task
    def small(n: int) -> int:
        return n

    small.send_many(list(range(3000)))
    wid = _uuid.uuid4()
    options = f"-c search_path={schema} {WORKER_PLANNER_OPTIONS}"

    def finish(rows: list) -> dict:  # type: ignore[type-arg]
        now = time.time()
        done_rows = [
            FinishedRow(
                r.task_id,
                r.task_name,
                r.attempt,
                "completed",
                True,
                "1",
                None,
                None,
                None,
                now,
                now,
            )
            for r in rows
        ]
        return WorkerQueries.finish_params(wid, done_rows)

    def give_back(rows: list) -> dict:  # type: ignore[type-arg]
        return {
            "worker_id": wid,
            "task_ids": [r.task_id for r in rows],
            "attempts": [r.attempt for r in rows],
        }

    def prepared(name: str) -> tuple[str, list[str]]:
        """The statement with $n placeholders, for PREPARE, and its parameter names."""
        keys: list[str] = []

        def number(m: re.Match[str]) -> str:
            if m.group(1) not in keys:
                keys.append(m.group(1))
            return f"${keys.index(m.group(1)) + 1}"

        return re.sub(r"%\((\w+)\)s", number, q(name)), keys

    with psycopg.connect(database_url, options=options) as c:
        c.execute("ANALYZE task")
        c.commit()
        # the worker prepares its statements: after five runs PostgreSQL may switch to a
        # generic plan, which knows nothing of the batch's size
        for mode in ("custom", "generic"):
            for name, params in (("finish_runs", finish), ("give_back_tasks", give_back)):
                rows, _, _ = WorkerQueries.claim(c, wid, [small.name], [], 1000)
                assert len(rows) == 1000
                cur = psycopg.ClientCursor(c)  # values inlined: the planner sees the batch
                values = params(rows)
                if mode == "custom":
                    sql, args = q(name), values
                else:
                    text, keys = prepared(name)
                    cur.execute(f"PREPARE probe_{name} AS {text}")  # gone with the rollback
                    cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                    sql = f"EXECUTE probe_{name}(" + ", ".join(["%s"] * len(keys)) + ")"
                    args = [values[k] for k in keys]
                [[plan]] = cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, args).fetchall()
                nodes = _plan_nodes(plan[0]["Plan"])
                lookups = [
                    n for n in nodes if n.get("Relation Name") == "task" and n.get("Index Name")
                ]
                assert [(n["Index Name"], n["Actual Loops"]) for n in lookups] == [
                    ("task_pkey", 1000)
                ], (mode, name, nodes)
                assert not any(n.get("Rows Removed by Join Filter") for n in nodes), (mode, name)
                c.rollback()
