"""The ledger's state moves, as pure logic: where an attempt goes, and that none is forgotten."""

from __future__ import annotations

import uuid

from hyrex_like.dispatcher import new_stats
from hyrex_like.states import RunStatus
from hyrex_like.worker.ledger import Ledger
from hyrex_like.worker.pacing import Pace
from hyrex_like.worker.protocol import Job


def _jobs(n: int, args: str = "{}", name: str = "t") -> list[Job]:
    return [Job(uuid.uuid4(), name, "q", 5, args, 1, 0, None, None, None) for _ in range(n)]


def test_an_executors_unstarted_jobs_run_next_or_go_back_once_stopping():
    ledger = Ledger(2, new_stats())
    ledger.claimed(_jobs(5))
    first = ledger.next_batch(3, None)
    assert first is not None
    ledger.assign(0, first)
    head = ledger.answered(0)
    ledger.finish(head, RunStatus.LOST, True, None, "ExecutorLost", "died", None)
    ledger.requeue_rest(0)
    assert list(ledger.ready)[:2] == first[1:]  # ahead of what was claimed after them
    assert ledger.stats[RunStatus.COMPLETED.value] == 0 and ledger.stats["failed_attempts"] == 1
    ledger.assign(1, ledger.next_batch(2, None) or [])
    ledger.begin_stop()
    ledger.requeue_rest(1)
    assert not ledger.ready and len(ledger.giveback) == 4
    ledger.claimed(_jobs(1))  # a claim that lands after the stop goes straight back
    assert len(ledger.giveback) == 5


def test_a_top_up_stays_under_the_byte_limit_and_one_big_job_waits():
    ledger = Ledger(1, new_stats())
    ledger.claimed(_jobs(3, "x" * 6))
    assert [len(j.args) for j in ledger.next_batch(10, 13) or []] == [6, 6]
    ledger.claimed(_jobs(1, "x" * 20))
    ledger.ready.rotate(1)  # the big one first
    assert ledger.next_batch(10, 13) is None
    assert [len(j.args) for j in ledger.ready] == [20, 6]  # nothing taken, order kept


def test_a_failed_write_puts_its_rows_back_first_and_nothing_is_forgotten_meanwhile():
    ledger = Ledger(1, new_stats())
    jobs = _jobs(3)
    for job in jobs[:2]:
        ledger.finish(job, RunStatus.COMPLETED, True, "1", None, None, None)
    ledger.claimed([jobs[2]])
    assert ledger.hand_over() == 1  # ready -> giveback
    batch = ledger.take_for_write()
    assert not ledger.has_unwritten()
    assert sorted(ledger.known_task_ids()) == sorted(j.task_id for j in jobs)
    assert ledger.in_flight() == 3
    later = _jobs(1)[0]
    ledger.finish(later, RunStatus.FAILED, True, None, "E", "m", None)
    ledger.written(batch)
    ledger.write_failed(batch.giveback, batch.finished)
    assert [r.task_id for r in ledger.finished] == [jobs[0].task_id, jobs[1].task_id, later.task_id]
    assert ledger.giveback == [jobs[2]]


def test_a_take_back_answers_out_of_order_and_its_jobs_run_next():
    ledger = Ledger(1, new_stats())
    ledger.claimed(_jobs(5))
    batch = ledger.next_batch(4, None) or []
    ledger.assign(0, batch)
    # the executor runs batch[0]; it hands back batch[2] and batch[3] before its result
    taken = [ledger.take_out(0, j.task_id.bytes) for j in batch[2:]]
    assert [t[0] if t else None for t in taken] == [2, 2]  # positions when answered
    assert ledger.take_out(0, uuid.uuid4().bytes) is None
    ledger.taken_back([t[1] for t in taken if t])
    assert list(ledger.ready)[:2] == batch[2:]  # ahead of what was never sent
    assert list(ledger.assigned[0]) == batch[:2]
    ledger.begin_stop()
    ledger.taken_back([ledger.answered(0)])  # a drain's skip, once stopping: back to the queue
    assert ledger.giveback[-1] is batch[0]


def test_claims_count_no_room_for_executors_busy_with_long_tasks():
    ledger = Ledger(2, new_stats())
    ledger.depth = 4
    assert ledger.room(now=10.0) == 8
    ledger.claimed(_jobs(3))
    ledger.assign(0, ledger.next_batch(1, None) or [])
    ledger.long_at[0] = 5.0  # its head has run long: no room there, and it is not counted
    assert ledger.room(now=10.0) == 4 - 2
    ledger.assign(1, ledger.next_batch(1, None) or [])
    ledger.long_at[1] = 9.0
    assert ledger.room(now=10.0) == 0  # all busy with long tasks: claim nothing
    ledger.answered(1)
    assert ledger.long_at[1] == float("inf") and ledger.room(now=10.0) == 4 - 1


def test_batches_hold_what_starts_within_the_horizon():
    pace = Pace(horizon=0.2, prefetch=16)
    jobs = _jobs(20)
    assert pace.fit(jobs, 16, 0.0) == 16 and pace.depth() == 16  # nothing seen yet: full
    pace.observe("t", 0.00003)
    assert pace.fit(jobs, 16, 0.0) == 16 and pace.depth() == 16  # tiny tasks: full batches
    slow = Pace(horizon=0.2, prefetch=16)
    slow.observe("t", 0.05)
    assert slow.fit(jobs, 16, 0.0) == 4 and slow.depth() == 4
    assert slow.fit(jobs, 16, 0.15) == 1  # a top-up behind 0.15 s of queued work
    assert abs(slow.ahead(jobs[:3], elapsed=0.02) - (0.05 * 3 - 0.02)) < 1e-9
    for _ in range(3):
        slow.observe("t", 5.0)
    assert slow.fit(jobs, 16, 0.0) == 1 and slow.depth() == 1  # long tasks: no pipelining
    other = _jobs(3, name="other")  # a name not seen yet counts at the worker's pace
    assert slow.fit(other, 3, 0.0) == 1


def test_one_tiny_task_preempted_on_a_busy_machine_does_not_shrink_the_batches():
    pace = Pace(horizon=0.2, prefetch=1024)
    for _ in range(5):
        pace.observe("noop", 0.00003)
    pace.observe("noop", 0.005)  # a time slice lost to another process
    assert pace.depth() == 1024 and pace.fit(_jobs(2000, name="noop"), 1024, 0.0) == 1024
