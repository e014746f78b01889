"""The ledger's state moves, as pure logic: where an attempt goes, and that none is forgotten."""

from __future__ import annotations

import uuid

from hyrex_like.dispatcher import new_stats
from hyrex_like.states import RunStatus
from hyrex_like.worker.ledger import Ledger
from hyrex_like.worker.protocol import Job


def _jobs(n: int, args: str = "{}") -> list[Job]:
    return [Job(uuid.uuid4(), "t", "q", 5, args, 1, 0, None, None, None) for _ in range(n)]


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
    ledger.give_back(jobs[2])
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
