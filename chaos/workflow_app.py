"""The app the workflow chaos runner sends to its workers: `hyrex-like run-worker workflow_app:hy`.

One workflow, ``chaos_chain``: three typed steps, ``first`` (Start -> Carry), ``second``
(Carry -> Carry) and ``third`` (Carry -> Final, an async body). Each step's output is the next
one's input, and each step folds its own constant into ``acc`` and appends its name to
``trail``, so the final result proves every step ran on its predecessor's real output:
``acc == expected_acc(seq)`` and ``trail == ["first", "second", "third"]``.

Every body records its execution exactly as chaos_app.py's bodies do (the same ``S``/``E``/``X``
lines in ``$CHAOS_RECORD_DIR``, and the same kernel lock, on byte ``3 * seq + step``), so the
runner counts executions per (task id, attempt) with run_chaos.py's reader and its rules.
"""

from __future__ import annotations

import asyncio
import random
import time

from chaos_app import Job, _Execution
from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()

QUEUE = "wf-chaos"
# Every kill of an executor or a worker mid-body costs the step an attempt; the chaos must not
# use up a step's retries (then the workflow would fail, which is not what is tested here).
MAX_RETRIES = 25
STEPS = ("first", "second", "third")
MULTIPLIERS = (3, 7, 11)


class Start(BaseModel):
    seq: int
    sleeps: list[float]  # one per step: how long its body works (seconds)


class Carry(BaseModel):
    seq: int
    sleeps: list[float]
    acc: int
    trail: list[str]


class Final(BaseModel):
    seq: int
    acc: int
    trail: list[str]


def fold(acc: int, step: int) -> int:
    return acc * MULTIPLIERS[step] + step + 1


def expected_acc(seq: int) -> int:
    acc = seq
    for step in range(len(STEPS)):
        acc = fold(acc, step)
    return acc


def plan(n: int, rng: random.Random) -> dict[int, list[float]]:
    """seq -> each step's work (s): mostly a few ms, about one step in three 0.1-0.6 s (so
    kills land mid-body)."""
    return {
        seq: [rng.uniform(0.1, 0.6) if rng.random() < 0.3 else rng.uniform(0, 0.02) for _ in STEPS]
        for seq in range(n)
    }


def _lock_job(seq: int, step: int) -> Job:
    return Job(seq=3 * seq + step)


@hy.task(queue=QUEUE, max_retries=MAX_RETRIES, retry_backoff=0)
def first(start: Start) -> Carry:
    with _Execution(_lock_job(start.seq, 0)):
        time.sleep(start.sleeps[0])
        return Carry(seq=start.seq, sleeps=start.sleeps, acc=fold(start.seq, 0), trail=["first"])


@hy.task(queue=QUEUE, max_retries=MAX_RETRIES, retry_backoff=0)
def second(c: Carry) -> Carry:
    with _Execution(_lock_job(c.seq, 1)):
        time.sleep(c.sleeps[1])
        return Carry(seq=c.seq, sleeps=c.sleeps, acc=fold(c.acc, 1), trail=[*c.trail, "second"])


@hy.task(queue=QUEUE, max_retries=MAX_RETRIES, retry_backoff=0)
async def third(c: Carry) -> Final:
    with _Execution(_lock_job(c.seq, 2)):
        await asyncio.sleep(c.sleeps[2])
        return Final(seq=c.seq, acc=fold(c.acc, 2), trail=[*c.trail, "third"])


chain = hy.workflow("chaos_chain", [first, second, third])
