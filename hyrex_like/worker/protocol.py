"""The pipe protocol between the dispatcher and its executors: the one module both sides import.

The parent sends batches of jobs (`encode_batch`: a pickled list of `Job.wire` tuples, or
``None`` to stop); an executor answers with pickled lists of result tuples (shapes below) and
once, at start, ``("ready", pid)``. `DRAIN_SIGNAL` and `TAKE_BACK_SIGNAL` are part of the
protocol too: the parent sends them, the executor obeys them.
"""

from __future__ import annotations

import pickle
import signal
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..db.rows import ClaimedRow


@dataclass(slots=True)
class Job(ClaimedRow):
    """A claimed task attempt (the claim's row), as handed to an executor."""

    def wire(self) -> tuple[Any, ...]:
        """The job as sent to an executor: a plain tuple, ids as bytes and ``scheduled_for``
        as epoch seconds (cheap to pickle; most jobs have none), the trace context as sent (JSON
        text or None). The executor rebuilds the
        aware datetime only if the task asks for its context (`from_wire`)."""
        scheduled_for = self.scheduled_for
        return (
            self.task_id.bytes,
            self.task_name,
            self.queue,
            self.priority,
            self.args,
            self.attempt,
            self.max_retries,
            self.timeout,
            self.parent_id.bytes if self.parent_id else None,
            self.root_id.bytes if self.root_id else None,
            None if scheduled_for is None else scheduled_for.timestamp(),
            self.trace_context,
        )

    @classmethod
    def from_wire(cls, w: tuple[Any, ...]) -> Job:
        return cls(
            uuid.UUID(bytes=w[0]),
            w[1],
            w[2],
            w[3],
            w[4],
            w[5],
            w[6],
            w[7],
            uuid.UUID(bytes=w[8]) if w[8] else None,
            uuid.UUID(bytes=w[9]) if w[9] else None,
            None if w[10] is None else datetime.fromtimestamp(w[10], UTC),
            w[11],
        )


# Positions in `Job.wire` the executor reads without building the Job.
_W_KEY, _W_NAME, _W_QUEUE, _W_ARGS, _W_ATTEMPT, _W_TIMEOUT, _W_TRACE = 0, 1, 2, 4, 5, 7, 11

# Result messages: lists of tuples, task ids as 16 bytes:
#   ("ok",   task_id, attempt, started, finished, result_json)
#   ("err",  task_id, attempt, started, finished, type, message, traceback, retryable)
#   ("skip", task_id, attempt)                  not started: draining, or taken back
#   ("progress", task_id, attempt, json)       what the running task last reported
#                                              (update_progress), sampled every 0.1 s
# and once, at start: ("ready", pid). A skip may come before the result of the job running then
# (a take-back answers at once): the parent matches skips by task id. An "ok" or "err" has one
# more field, the attempt's last progress (json), when it reported any: written with the
# outcome, so a finished attempt's last value never waits for the progress writer.
OK, ERR, SKIP, PROGRESS = "ok", "err", "skip", "progress"

# Only from an executor running async tasks side by side (``async_concurrency`` > 1), where
# more than one job of a slot runs at once and results come in any order:
#   ("start", task_id, attempt)                 the job began (before its result, if any)
#   ("timeout", task_id, attempt, started, finished, message[, progress])
#                                               its coroutine ran past its timeout and was
#                                               cancelled (its siblings run on)
#   ("cancel_done", task_id, attempt, started, finished[, progress])
#                                               cancelled as the parent asked (CANCEL)
# and the parent may send, besides batches and None, (CANCEL, task_id): cancel that
# running coroutine.
START, TIMEOUT, CANCELED, CANCEL = "start", "timeout", "cancel_done", "cancel"

READY = "ready"

TOP_UP_BYTES = 16_384
"""A top-up batch (sent to a busy executor) stays well under a pipe buffer (64 KiB on Linux),
so the send never blocks on an executor busy with a long task."""


def encode_batch(jobs: list[Job]) -> bytes:
    """One pipe message holding ``jobs`` (plain pickle: cheaper than ``Connection.send``)."""
    return pickle.dumps([job.wire() for job in jobs], pickle.HIGHEST_PROTOCOL)


DRAIN_SIGNAL = signal.SIGUSR1
"""Sent by the dispatcher to its executors when it begins to stop: start no further jobs.

A signal and a flag, not a shared ``multiprocessing.Event``: checking a semaphore-backed event
before every job cost ~1 us per task, and creating one started multiprocessing's resource
tracker (a third interpreter) at every worker start; now only a spawned replacement executor
starts it. The dispatcher blocks the signal while it starts an executor, so it stays pending
until `executor_main` has its handler in place. The handler restarts interrupted system calls
(``siginterrupt(False)``), so native code inside a running task does not see EINTR."""


TAKE_BACK_SIGNAL: int = signal.SIGRTMIN + 4 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
"""Sent by the dispatcher to an executor busy with a long task: answer SKIP at once for every job
it holds and has not started (those received and those still in the pipe), so they run
elsewhere. Later batches are still accepted. A real-time signal (SIGRTMIN+4; SIGUSR2 where
there are none), unlikely to clash with an app's own. The handler takes back whatever is held
when it runs, so a repeated or late one is harmless. Blocked while an executor starts, like
`DRAIN_SIGNAL`, and restarting interrupted system calls too."""
