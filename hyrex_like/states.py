"""Task, run and worker statuses: the one place they are defined.

The values are the strings stored in the database: ``task.status`` (the ``task_status`` domain),
``task_run.status`` and ``worker.status`` (table CHECKs). tests/test_states.py checks these
enums against a migrated schema's constraints and every status literal in ``queries.sql``
against them. Members are ``str``: they compare equal to the stored strings and psycopg sends
them as their values.

A task moves along ``TASK_TRANSITIONS`` (also drawn at the top of ``sql/schema.sql``)::

    queued  -> running     a worker claimed it (its run row is opened by the same statement)
    running -> completed   the function returned
    running -> queued      an attempt failed, timed out or was lost with retries left, or the
                           worker shut down or died (those do not use up a retry)
    running -> failed      an attempt failed with no retries left
    queued  -> canceled    canceled before a worker claimed it
    running -> canceled    canceled while running: the attempt ended (stopped by its worker,
                           failed, given back or lost with its worker) and is not run again
    queued  -> paused      a workflow step held by a pause of its workflow (never claimed)
    running -> paused      its workflow was paused while it ran: the attempt ended (stopped by
                           its worker, or any way but completion) and waits for the resume
    paused  -> queued      its workflow was resumed
    paused  -> canceled    its workflow was canceled

A retry by hand (``handle.retry()``) queues a failed or canceled task again: outside the
worker's state machine, so `TASK_RETRY_BY_HAND` holds it apart.

A run row is opened ``running`` and closed once with a final run status; an attempt given back
before it started (a claim undone) has its run row deleted, not closed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class TaskStatus(enum.StrEnum):
    """Where a task stands (``task.status``)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    PAUSED = "paused"  # a workflow step held by a pause of its workflow: never claimed


class RunStatus(enum.StrEnum):
    """How one attempt ended, or ``running`` while it has not (``task_run.status``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # the function raised
    TIMED_OUT = "timed_out"  # killed at the task's timeout
    LOST = "lost"  # its executor died, or its worker stopped heartbeating
    INTERRUPTED = "interrupted"  # the worker shut down while it ran: requeued, not counted
    CANCELED = "canceled"  # stopped by its worker because the task was canceled


class WorkflowState(enum.StrEnum):
    """A workflow row's control state (``workflow.state``): what was done to the run, not its
    summary (`WorkflowStatus`, read from its steps)."""

    RUNNING = "running"  # (also a failed run: its failed step decides the summary)
    PAUSED = "paused"
    CANCELED = "canceled"
    COMPLETED = "completed"  # its final step completed


class WorkflowStatus(enum.StrEnum):
    """A workflow run's summary status (`hyrex_like.workflow_status.summarize`)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELED = "canceled"
    COMPLETED = "completed"


class WorkerStatus(enum.StrEnum):
    """A worker process's row (``worker.status``); ``lost`` is set by the rescuer."""

    RUNNING = "running"
    STOPPED = "stopped"
    LOST = "lost"


TASK_FINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED}
)
"""No worker runs a task in one of these again (``TaskHandle`` waits for one); only a retry by
hand (`TASK_RETRY_BY_HAND`) queues it anew."""

TASK_UNFINISHED: frozenset[TaskStatus] = frozenset(TaskStatus) - TASK_FINAL
"""Queued or running: a worker may still run it."""

TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {
        TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELED, TaskStatus.PAUSED}),
        TaskStatus.RUNNING: frozenset(
            {
                TaskStatus.COMPLETED,
                TaskStatus.QUEUED,
                TaskStatus.FAILED,
                TaskStatus.CANCELED,
                TaskStatus.PAUSED,
            }
        ),
        TaskStatus.PAUSED: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELED}),
        TaskStatus.COMPLETED: frozenset(),
        TaskStatus.FAILED: frozenset(),
        TaskStatus.CANCELED: frozenset(),
    }
)
"""Every status a task may move to from each status; final statuses lead nowhere."""

TASK_RETRY_BY_HAND: frozenset[TaskStatus] = frozenset({TaskStatus.FAILED, TaskStatus.CANCELED})
"""The final statuses a retry by hand queues again (completed ones are done for good)."""

RUN_FINAL: frozenset[RunStatus] = frozenset(RunStatus) - {RunStatus.RUNNING}
"""A run row closed with one of these is never written again."""

RUN_UNFINISHED: frozenset[RunStatus] = frozenset({RunStatus.RUNNING})
"""The attempt is still held by a worker (or its worker is gone and not yet rescued)."""

RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = MappingProxyType(
    {status: frozenset() for status in RUN_FINAL} | {RunStatus.RUNNING: RUN_FINAL}
)
"""A run is closed once, from ``running`` to a final run status."""


def task_can_move(old: TaskStatus, new: TaskStatus) -> bool:
    """Whether ``TASK_TRANSITIONS`` allows a task to go from ``old`` to ``new``."""
    return new in TASK_TRANSITIONS[old]
