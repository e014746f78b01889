"""A queue's concurrency limit holds across every worker (DESIGN invariant 9): 3 workers with 4
executors each never run more than 2 tasks of a queue limited to 2, the queue drains, and the
queues without a limit beside it still run many at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hyrex_like import HyrexRegistry

from .helpers import Worker, count, done, query, wait_until, worker_ids

APP = "queue_app:hy"


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one instant (an end before a start
    at the same instant: back to back is not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = top = 0
    for _, step in events:
        now += step
        top = max(top, now)
    return top


def test_most_at_once() -> None:
    assert most_at_once([(0, 1), (1, 2)]) == 1
    assert most_at_once([(0, 2), (1, 3), (1.5, 4)]) == 3


def test_a_limit_of_two_holds_across_three_workers_and_the_queue_drains(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    qapp: Any,
    database_url: str,
    schema: str,
) -> None:
    registry.queue("payments", concurrency_limit=2)
    workers = [worker(APP, "--processes", "4", "--poll-interval", "30") for _ in range(3)]
    wait_until(
        lambda: (
            len(worker_ids(database_url, schema)) == 3
            and all(len(w.executor_pids()) == 4 for w in workers)
        ),
        60,
        what="three workers with four executors each",
    )
    limited = qapp.pay.send_many([{"n": n, "seconds": 0.02} for n in range(200)])
    free = qapp.other.send_many([{"n": n, "seconds": 0.5} for n in range(40)])
    handles = [*limited, *free]
    wait_until(lambda: all(h.refresh().done for h in handles), 120, what="both queues to drain")
    assert {h.status for h in handles} == {"completed"}
    spans = [(h.result["began"], h.result["ended"]) for h in limited]
    assert most_at_once(spans) == 2  # at the limit, never past it
    # the queue beside it was not held to the limit (one worker may take all of these, and it
    # runs four at a time)
    assert most_at_once([(h.result["began"], h.result["ended"]) for h in free]) >= 3
    # every worker took part in the limited queue (each claims it while the others hold it)
    ran_on = {h.task_runs[-1].worker_id for h in limited}
    assert len(ran_on) >= 2, ran_on
    info = next(i for i in registry.queues() if i.name == "payments")
    assert (info.concurrency_limit, info.queued, info.running) == (2, 0, 0)
    for w in workers:
        assert w.stop() == 0


def test_raising_and_removing_a_limit_takes_effect_on_running_workers(
    worker: Callable[..., Worker], registry: HyrexRegistry, qapp: Any
) -> None:
    registry.queue("payments", concurrency_limit=1)
    worker(APP, "--processes", "4", "--poll-interval", "30")
    first = qapp.pay.send_many([{"n": n, "seconds": 0.3} for n in range(4)])
    wait_until(lambda: all(h.refresh().done for h in first), 60, what="the first batch")
    assert most_at_once([(h.result["began"], h.result["ended"]) for h in first]) == 1
    registry.queue("payments", concurrency_limit=None)
    second = qapp.pay.send_many([{"n": n, "seconds": 0.5} for n in range(4)])
    for h in second:
        done(h, 60)
    assert most_at_once([(h.result["began"], h.result["ended"]) for h in second]) >= 3


def _run_spans(database_url: str, schema: str, queue: str) -> list[tuple[float, float]]:
    """Each attempt of the queue's tasks, from its claim to its end (what the limit bounds):
    a run of a killed worker ends when it is rescued."""
    rows = query(
        database_url,
        schema,
        "SELECT extract(epoch FROM r.claimed_at), extract(epoch FROM r.finished_at) "
        "FROM task_run AS r JOIN task AS t ON t.id = r.task_id WHERE t.queue = %s",
        (queue,),
    )
    return [(float(a), float(b)) for a, b in rows]


@pytest.mark.slow
def test_the_limit_holds_when_a_worker_dies_holding_tasks(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    qapp: Any,
    database_url: str,
    schema: str,
) -> None:
    """A SIGKILLed worker's tasks stay running (and counted) until the survivor rescues them,
    so the survivor never runs more than the limit beside them; then they run again."""
    registry.queue("payments", concurrency_limit=2)
    fast = ("--processes", "2", "--heartbeat-interval", "0.5", "--stale-after", "3")
    doomed = worker(APP, *fast)
    wait_until(lambda: len(doomed.executor_pids()) == 2, 60, what="the first worker")
    handles = qapp.pay.send_many([{"n": n, "seconds": 1.0} for n in range(12)])
    wait_until(
        lambda: sum(h.refresh().status == "running" for h in handles) == 2,
        30,
        what="two tasks running on the first worker",
    )
    survivor = worker(APP, *fast)
    wait_until(lambda: len(survivor.executor_pids()) == 2, 60, what="the second worker")
    doomed.kill()
    wait_until(lambda: all(h.refresh().done for h in handles), 120, what="the queue to drain")
    assert {h.status for h in handles} == {"completed"}
    spans = _run_spans(database_url, schema, "payments")
    assert len(spans) >= 14  # the two killed attempts, each run again
    assert most_at_once(spans) == 2
    assert survivor.stop() == 0


def test_a_limited_queue_is_not_starved_by_a_deep_queue_beside_it(
    worker: Callable[..., Worker],
    registry: HyrexRegistry,
    qapp: Any,
    database_url: str,
    schema: str,
) -> None:
    """A worker whose executors always have work queued (a deep unlimited queue) still claims
    the limited queue's tasks, one per claim, long before the deep queue drains."""
    registry.queue("payments", concurrency_limit=1)
    deep = qapp.other.send_many([{"n": n, "seconds": 0.01} for n in range(1500)])
    w = worker(APP, "--processes", "2", "--poll-interval", "30")
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") >= 50,
        60,
        what="the deep queue to be draining",
    )
    limited = qapp.pay.send_many([{"n": n} for n in range(5)])
    wait_until(lambda: all(h.refresh().done for h in limited), 60, what="the limited tasks")
    left = count(database_url, schema, "status = 'queued' AND queue = 'other'")
    assert left > 0, "the limited tasks waited for the deep queue to drain"
    assert most_at_once([(h.result["began"], h.result["ended"]) for h in limited]) == 1
    wait_until(lambda: all(h.refresh().done for h in deep), 120, what="the deep queue")
    assert w.stop() == 0


def test_a_limit_set_during_a_claim_waits_for_it_and_counts_its_tasks(
    registry: HyrexRegistry, qapp: Any, database_url: str, schema: str
) -> None:
    """A claim that read the settings before the limit existed took 5 tasks; the limit of 2
    is written only once that claim has ended, and then counts them: nothing more starts."""
    import threading
    import uuid

    import psycopg

    from hyrex_like.db import WorkerQueries

    qapp.pay.send_many([{"n": n} for n in range(10)])
    conninfo = psycopg.conninfo.make_conninfo(database_url, options=f"-c search_path={schema}")
    with psycopg.connect(conninfo) as claim:  # a transaction left open: a claim in flight
        rows, _, _ = WorkerQueries.claim(claim, uuid.uuid4(), ["pay"], [], 5)
        assert len(rows) == 5
        setter = threading.Thread(
            target=registry.queue, args=("payments",), kwargs={"concurrency_limit": 2}
        )
        setter.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
        wait_until(
            lambda: query(database_url, schema, waiting, (f"{schema}.queue",))[0][0] == 1,
            10,
            what="the limit to wait for the claim",
        )
        assert setter.is_alive()
        claim.commit()
    setter.join(10)
    assert not setter.is_alive()
    with psycopg.connect(conninfo, autocommit=True) as other:
        more, blocked = WorkerQueries.claim_limited(other, uuid.uuid4(), ["pay"], [], 10)
    assert (more, blocked) == ([], True)
    info = next(i for i in registry.queues() if i.name == "payments")
    assert (info.concurrency_limit, info.running, info.queued) == (2, 5, 5)
