"""A workflow's summary status, read from its steps' tasks (sca-rhythm's rule).

The first step, in order, that has not completed decides (steps are numbered in an order where
every step comes after the steps it follows):

- every step completed: ``completed`` (SUCCESS);
- the workflow was canceled: ``canceled`` (REVOKED, final); paused: ``paused`` (REVOKED in
  sca-rhythm, which resumes it; so does `WorkflowHandle.resume`);
- the deciding step's task failed: ``failed`` (FAILURE, resumable); was canceled by hand:
  ``canceled``; is held by a pause: ``paused``;
- it is the first step and has not been tried yet: ``pending`` (PENDING);
- else ``running`` (STARTED: the step runs, waits for a retry, or was just queued).

Groups, as sca-rhythm's: DONE (nothing happens until someone acts) = completed, failed,
canceled, paused; ACTIVE = pending, running.
"""

from __future__ import annotations

from collections.abc import Sequence

from .states import TaskStatus, WorkflowState
from .states import WorkflowStatus as WorkflowStatus

WORKFLOW_DONE = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELED,
        WorkflowStatus.PAUSED,
    }
)
"""Statuses in which nothing happens until someone acts (sca-rhythm's DONE group)."""
WORKFLOW_ACTIVE = frozenset(set(WorkflowStatus) - WORKFLOW_DONE)
"""Statuses in which a step runs or is about to (sca-rhythm's ACTIVE group)."""

_BY_TASK = {
    TaskStatus.FAILED: WorkflowStatus.FAILED,
    TaskStatus.CANCELED: WorkflowStatus.CANCELED,
    TaskStatus.PAUSED: WorkflowStatus.PAUSED,
}


def summarize(
    state: str, steps: Sequence[tuple[TaskStatus, int] | None]
) -> tuple[WorkflowStatus, int | None]:
    """The summary status of a workflow in control ``state`` (the workflow row's: running,
    paused, canceled, completed) whose steps' tasks are ``steps`` (in step order: each task's
    status and attempt count, None for a step without a task yet), and the index of the step
    that decides it (None when every step completed)."""
    deciding = next(
        (i for i, step in enumerate(steps) if step is None or step[0] != TaskStatus.COMPLETED),
        None,
    )
    # (a completed workflow whose steps retention deleted before its row is still completed)
    if deciding is None or state == WorkflowState.COMPLETED:
        return WorkflowStatus.COMPLETED, None
    if state == WorkflowState.CANCELED:
        return WorkflowStatus.CANCELED, deciding
    if state == WorkflowState.PAUSED:
        return WorkflowStatus.PAUSED, deciding
    step = steps[deciding]
    if step is not None and step[0] in _BY_TASK:
        return _BY_TASK[step[0]], deciding
    if deciding == 0 and (step is None or (step[0] == TaskStatus.QUEUED and step[1] == 0)):
        return WorkflowStatus.PENDING, deciding
    return WorkflowStatus.RUNNING, deciding
