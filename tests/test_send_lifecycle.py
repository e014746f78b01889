"""Delayed sends (delay=, run_at=) and sends once per idempotency key, against a real server;
a real worker where claiming is the behaviour (never early, keys of finished tasks)."""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from hyrex_like import ConfigurationError, HyrexRegistry, InvalidTaskOption

from .helpers import count, done, query, wait_until


@pytest.fixture
def lapp(app_registry):  # type: ignore[no-untyped-def]
    """tests/apps/send_lifecycle_app.py, its registry bound to this test's schema."""
    from .apps import send_lifecycle_app

    app_registry(send_lifecycle_app.hy)
    return send_lifecycle_app


def _between(value: datetime, low: datetime, high: datetime) -> bool:
    return low <= value <= high


# ------------------------------------------------------------------------ delayed sends


def test_send_with_delay_is_queued_until_its_due_time(lapp):
    before = datetime.now(UTC)
    handle = lapp.record.send({"n": 1}, delay=timedelta(minutes=5))
    after = datetime.now(UTC)
    assert handle.refresh().status == "queued"
    assert _between(handle.run_after, before + timedelta(minutes=5), after + timedelta(minutes=5))


@pytest.mark.parametrize("delay", [90, 90.5, timedelta(seconds=90)])
def test_delay_takes_seconds_or_a_timedelta(lapp, delay):
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    before = datetime.now(UTC)
    handle = lapp.record.send({"n": 1}, delay=delay)
    after = datetime.now(UTC)
    due = timedelta(seconds=seconds)
    assert _between(handle.run_after, before + due, after + due)


def test_run_at_is_the_due_time_exactly(lapp):
    due = datetime(2031, 5, 17, 8, 30, 0, 123456, tzinfo=UTC)
    assert lapp.record.send({"n": 1}, run_at=due).run_after == due
    berlin = datetime(2031, 5, 17, 10, 30, tzinfo=UTC).astimezone()
    assert lapp.record.send({"n": 2}, run_at=berlin).run_after == berlin


def test_with_config_asend_and_send_many_take_a_due_time(lapp):
    due = datetime.now(UTC) + timedelta(hours=1)
    later = lapp.record.with_config(run_at=due)
    assert later.send({"n": 1}).run_after == due
    assert asyncio.run(later.asend({"n": 2})).run_after == due
    assert [h.run_after for h in later.send_many([{"n": 3}, {"n": 4}])] == [due, due]
    assert asyncio.run(lapp.record.asend({"n": 5}, run_at=due)).run_after == due
    handles = lapp.record.send_many([{"n": 6}, {"n": 7}], run_at=due)
    assert [h.run_after for h in handles] == [due, due]
    # a delay counts from each send, and a send's own timing replaces the sender's
    before = datetime.now(UTC)
    delayed = lapp.record.with_config(delay=600).send({"n": 8})
    assert delayed.run_after >= before + timedelta(seconds=600)
    assert later.send({"n": 9}, delay=0).run_after <= datetime.now(UTC)
    assert later.with_config(run_at=None).send({"n": 10}).run_after <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"run_at": datetime(2031, 1, 1)}, "naive datetime"),
        ({"delay": 5, "run_at": datetime.now(UTC)}, "not both"),
        ({"delay": -1}, ">= 0"),
        ({"delay": timedelta(seconds=-1)}, ">= 0"),
        ({"delay": math.nan}, "finite"),
        ({"delay": math.inf}, "finite"),
        ({"delay": True}, "timedelta or a number"),
        ({"delay": "5s"}, "timedelta or a number"),
        ({"delay": 1e15}, "9999"),
        ({"run_at": "2031-01-01T00:00:00Z"}, "must be a datetime"),
    ],
)
def test_bad_timing_is_refused_naming_the_task_and_nothing_is_written(
    lapp, database_url, schema, options, problem
):
    lapp.hy.migrate()
    sends = [
        lambda: lapp.record.send({"n": 1}, **options),
        lambda: asyncio.run(lapp.record.asend({"n": 1}, **options)),
        lambda: lapp.record.send_many([{"n": 1}], **options),
        lambda: lapp.record.with_config(**options),
    ]
    for send in sends:
        with pytest.raises(InvalidTaskOption, match=problem) as info:
            send()
        assert "task record" in str(info.value)
    assert count(database_url, schema) == 0


def test_a_worker_never_claims_a_delayed_task_early(lapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    now_task = lapp.record.send({"n": 0})
    assert done(now_task, 30).status == "completed"  # the worker is up and idle
    handles = [lapp.record.send({"n": i}, delay=1.0 + i / 2) for i in range(1, 4)]
    due = [h.refresh().run_after for h in handles]
    for handle, due_at in zip(handles, due, strict=True):
        assert done(handle, 30).status == "completed"
        [run] = handle.task_runs
        assert run.claimed_at >= due_at, (run.claimed_at, due_at)
        assert run.started_at >= due_at
    assert w.stop() == 0


def test_run_after_of_a_task_waiting_for_its_retry_is_the_backoff_due_time(lapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    handle = lapp.fails_first.send({"n": 1})  # retry_backoff=30
    wait_until(
        lambda: handle.refresh().attempt_count == 1 and handle.status == "queued",
        30,
        what="the first attempt to fail",
    )
    [run] = handle.task_runs
    assert run.status == "failed"
    assert (handle.run_after - run.finished_at).total_seconds() == pytest.approx(30, abs=2)
    assert handle.run_after > datetime.now(UTC) + timedelta(seconds=20)
    assert handle.cancel() is True  # a task waiting for its retry: canceled, never run again
    assert handle.status == "canceled" and handle.run_after is None
    assert len(handle.task_runs) == 1
    assert w.stop() == 0


# ------------------------------------------------------------------- sends once per key


def test_sixteen_threads_sending_one_key_make_one_task(lapp, database_url, schema):
    lapp.hy.migrate()
    barrier = threading.Barrier(16)
    handles = []

    def send(i: int) -> None:
        barrier.wait()
        handles.append(lapp.record.send({"n": i}, idempotency_key="order-42"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(handles) == 16
    assert len({h.id for h in handles}) == 1
    assert sum(not h.deduplicated for h in handles) == 1
    assert count(database_url, schema) == 1


def test_the_key_alone_decides(lapp, database_url, schema):
    first = lapp.record.send({"n": 1}, idempotency_key="k")
    again = lapp.record.with_config(priority=9).send({"n": 2}, idempotency_key="k")
    assert first.deduplicated is False and again.deduplicated is True
    assert again.id == first.id
    assert again.refresh().row.args == {"n": 1} and again.priority == 5
    assert count(database_url, schema) == 1
    # another task name holds its own keys
    other = lapp.fails_before.send({"n": 1}, idempotency_key="k")
    assert other.deduplicated is False and other.id != first.id


def test_with_config_and_asend_take_a_key(lapp, database_url, schema):
    keyed = lapp.record.with_config(idempotency_key="nightly")
    first = keyed.send({"n": 1})
    assert asyncio.run(keyed.asend({"n": 2})).id == first.id
    assert asyncio.run(lapp.record.asend({"n": 3}, idempotency_key="nightly")).deduplicated
    fresh = asyncio.run(lapp.record.asend({"n": 4}, idempotency_key="weekly"))
    assert fresh.deduplicated is False
    assert keyed.send({"n": 5}, idempotency_key="weekly").id == fresh.id
    assert keyed.with_config(idempotency_key=None).send({"n": 6}).deduplicated is False
    assert count(database_url, schema) == 3


@pytest.mark.parametrize("key", ["", "   ", "a\x00b", "x" * 256, "\ud800", 42])
def test_a_bad_key_is_refused_and_nothing_is_written(lapp, database_url, schema, key):
    lapp.hy.migrate()
    with pytest.raises(InvalidTaskOption, match="idempotency_key"):
        lapp.record.send({"n": 1}, idempotency_key=key)
    with pytest.raises(InvalidTaskOption, match="idempotency_key"):
        lapp.record.with_config(idempotency_key=key)
    with pytest.raises(InvalidTaskOption, match="idempotency_key of item 0"):
        lapp.record.send_many([{"n": 1}], idempotency_key=[key])
    assert count(database_url, schema) == 0


def test_the_key_of_a_canceled_task_is_free_again(lapp):
    first = lapp.record.send({"n": 1}, idempotency_key="k", delay=600)
    assert lapp.hy.cancel(first.id) is True
    again = lapp.record.send({"n": 2}, idempotency_key="k")
    assert again.deduplicated is False and again.id != first.id


def test_a_completed_task_keeps_its_key_and_a_failed_one_frees_it(lapp, worker):
    w = worker("send_lifecycle_app:hy", "--processes", "1")
    ok = lapp.record.send({"n": 1}, idempotency_key="k")
    doomed = lapp.fails_before.send({"n": 9}, idempotency_key="k")  # fails twice, then failed
    assert done(ok, 30).status == "completed"
    assert done(doomed, 30).status == "failed"
    same = lapp.record.send({"n": 2}, idempotency_key="k")
    assert same.deduplicated is True and same.id == ok.id
    fresh = lapp.fails_before.send({"n": 1}, idempotency_key="k")
    assert fresh.deduplicated is False and fresh.id != doomed.id
    assert done(fresh, 30).status == "completed"
    assert w.stop() == 0


def test_a_key_in_the_callers_transaction_is_freed_by_a_rollback(lapp, database_url):
    lapp.hy.migrate()
    with psycopg.connect(database_url) as conn:
        inside = lapp.record.send({"n": 1}, conn=conn, idempotency_key="k")
        assert inside.deduplicated is False
        assert lapp.record.send({"n": 2}, conn=conn, idempotency_key="k").id == inside.id
        conn.rollback()
    after = lapp.record.send({"n": 3}, idempotency_key="k")
    assert after.deduplicated is False and after.id != inside.id


def test_a_keyed_send_waits_for_the_transaction_holding_the_key(lapp, database_url):
    lapp.hy.migrate()
    with psycopg.connect(database_url) as conn:
        inside = lapp.record.send({"n": 1}, conn=conn, idempotency_key="k")
        outside = []
        sender = threading.Thread(
            target=lambda: outside.append(lapp.record.send({"n": 2}, idempotency_key="k"))
        )
        sender.start()
        wait_until(
            lambda: query(
                database_url,
                "public",
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (conn.info.backend_pid,),
            )[0][0],
            30,
            what="the second send to wait on the first transaction",
        )
        assert not outside
        conn.commit()
        sender.join(30)
    [handle] = outside
    assert handle.deduplicated is True and handle.id == inside.id


def test_send_many_with_keys(lapp, database_url, schema):
    held = lapp.record.send({"n": 0}, idempotency_key="a")
    handles = lapp.record.send_many(
        [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}],
        idempotency_key=["a", "b", None, "b", None],
    )
    assert [h.deduplicated for h in handles] == [True, False, False, True, False]
    assert handles[0].id == held.id
    assert handles[3].id == handles[1].id
    assert len({h.id for h in handles}) == 4
    assert count(database_url, schema) == 4
    by_fn = lapp.record.send_many([{"n": 6}, {"n": 7}], idempotency_key=lambda p: f"n{p['n']}")
    assert [h.deduplicated for h in by_fn] == [False, False]
    assert lapp.record.send({"n": 7}, idempotency_key="n7").id == by_fn[1].id
    one_for_all = lapp.record.with_config(idempotency_key="all").send_many([{"n": 8}, {"n": 9}])
    assert [h.deduplicated for h in one_for_all] == [False, True]
    assert one_for_all[0].id == one_for_all[1].id


def test_send_many_refuses_one_string_key_and_a_wrong_count(lapp, database_url, schema):
    lapp.hy.migrate()
    with pytest.raises(InvalidTaskOption, match=r"with_config\(idempotency_key=...\)"):
        lapp.record.send_many([{"n": 1}], idempotency_key="k")
    with pytest.raises(InvalidTaskOption, match="2 idempotency keys for 1 payloads"):
        lapp.record.send_many([{"n": 1}], idempotency_key=["a", "b"])
    assert count(database_url, schema) == 0


# ------------------------------------------------------------------------ worker options


def test_hy_worker_takes_a_retention(lapp):
    assert lapp.hy.worker(retention="7d").options.retention == 7 * 86400
    assert lapp.hy.worker(retention=90).options.retention == 90
    assert lapp.hy.worker().options.retention is None  # off by default
    with pytest.raises(ConfigurationError, match="retention"):
        lapp.hy.worker(retention="soon")


def test_send_many_batches_sharing_keys_in_opposite_orders_do_not_deadlock(
    lapp, database_url, schema
):
    # Each batch takes its keys' index entries in key order, whatever the payloads' order.
    keys = [f"k{i:05d}" for i in range(5000)]
    errors: list[BaseException] = []
    handles: list[list[Any]] = []
    both_ready = threading.Barrier(2)

    def send(order: list[str]) -> None:
        hy = HyrexRegistry(database_url, schema=schema)
        task = hy.task(name="keyed")(_keyed)
        try:
            task.send({"n": 0}, idempotency_key="warm")  # pool open, statements ready
            payloads = [{"n": 1}] * len(order)
            both_ready.wait(30)
            handles.append(task.send_many(payloads, idempotency_key=order))
        except BaseException as exc:
            errors.append(exc)
        finally:
            hy.close()

    threads = [
        threading.Thread(target=send, args=(keys,)),
        threading.Thread(target=send, args=(keys[::-1],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as c:
        row = c.execute("SELECT count(*) FROM task WHERE task_name = 'keyed'").fetchone()
    assert row is not None and row[0] == len(keys) + 1
    assert sum(not h.deduplicated for batch in handles for h in batch) == len(keys)


def _keyed(item: dict[str, int]) -> None:
    return None
