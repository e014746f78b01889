"""`WorkflowHandle`: a sent workflow, its steps, its summary status and its result; pause,
resume and cancel it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic
from pydantic import TypeAdapter

from .db import workflows as db
from .errors import TaskNotCompleted, TaskNotFound, TaskWaitTimeout
from .handle import TaskHandle, poll_until
from .states import TaskStatus
from .workflow_status import WORKFLOW_DONE, WorkflowStatus, summarize

if TYPE_CHECKING:
    from .db import Store
    from .db.rows import TaskRow
    from .db.workflows import WorkflowRow

R = TypeVar("R")


@dataclass(frozen=True)
class StepState:
    """One step of a workflow as of the handle's last refresh."""

    name: str
    index: int
    task_name: str
    status: TaskStatus | None
    """Its task's status; None while the step has not started (its predecessors run)."""
    progress: Any
    """What its task last reported with ``update_progress`` (None: nothing yet)."""
    handle: TaskHandle[Any] | None
    """Its task's handle (runs, errors, result); None while the step has not started."""


class WorkflowHandle(Generic[R]):
    """A sent workflow. Read after `refresh()` (done on first use) or `wait()`."""

    def __init__(
        self,
        workflow_id: uuid.UUID,
        name: str,
        store: Store,
        result_adapter: TypeAdapter[Any] | None = None,
        step_adapters: dict[str, TypeAdapter[Any] | None] | None = None,
    ) -> None:
        self.id = workflow_id
        self.name = name
        self._store = store
        self._result_adapter = result_adapter
        self._step_adapters = step_adapters or {}
        self._row: WorkflowRow | None = None
        self._tasks: list[TaskRow] = []

    def __repr__(self) -> str:
        status = self._summary()[0] if self._row is not None else WorkflowStatus.PENDING
        return f"<WorkflowHandle {self.name} {self.id} {status}>"

    def refresh(self) -> WorkflowHandle[R]:
        """Reload the workflow and its steps' tasks (`WorkflowNotFound` if it is gone)."""
        self._row, self._tasks = db.get_workflow(self._store, self.id)
        self.name = self._row.name
        return self

    def _loaded(self) -> WorkflowRow:
        if self._row is None:
            self.refresh()
        assert self._row is not None
        return self._row

    def _summary(self) -> tuple[WorkflowStatus, int | None]:
        row = self._loaded()
        return summarize(row.state, db.step_states(len(row.steps), self._tasks))

    @property
    def status(self) -> WorkflowStatus:
        """The summary status: pending, running, paused, failed, canceled or completed (the
        first step not completed decides; see `hyrex_like.workflow_status`)."""
        return self._summary()[0]

    @property
    def done(self) -> bool:
        """True in the DONE group: completed, failed, canceled or paused."""
        return self.status in WORKFLOW_DONE

    @property
    def current_step(self) -> str | None:
        """The name of the step that decides the status (the first not completed); None once
        every step completed."""
        deciding = self._summary()[1]
        return None if deciding is None else self._loaded().steps[deciding]["name"]

    @property
    def steps(self) -> list[StepState]:
        """Every step in order, with its task's status, progress and handle."""
        row = self._loaded()
        by_step = {t.workflow_step: t for t in self._tasks}
        out = []
        for i, step in enumerate(row.steps):
            task = by_step.get(i)
            handle: TaskHandle[Any] | None = None
            if task is not None:
                adapter = self._step_adapters.get(step["name"])
                handle = TaskHandle(task.id, task.task_name, self._store, adapter)
            out.append(
                StepState(
                    name=step["name"],
                    index=i,
                    task_name=step["task_name"],
                    status=task.status if task else None,
                    progress=task.progress if task else None,
                    handle=handle,
                )
            )
        return out

    @property
    def progress(self) -> Any:
        """The current step's progress (None: it reported none, or every step completed)."""
        deciding = self._summary()[1]
        if deciding is None:
            return None
        return next((t.progress for t in self._tasks if t.workflow_step == deciding), None)

    @property
    def result(self) -> R:
        """The last step's result, as its return annotation's type when the workflow is
        defined here. `TaskNotCompleted` unless the workflow completed."""
        status = self.status
        if status is not WorkflowStatus.COMPLETED:
            raise TaskNotCompleted(
                f"workflow {self.name} ({self.id}) has no result: it is {status}"
                + (f" at step {self.current_step}" if self.current_step else ""),
                status=status,
            )
        last = len(self._loaded().steps) - 1
        final = next((t for t in self._tasks if t.workflow_step == last), None)
        if final is None or final.status != TaskStatus.COMPLETED:
            raise TaskNotFound(
                f"workflow {self.name} ({self.id}) completed, but its last step's task is gone "
                "(deleted by retention): its result is no longer stored"
            )
        stored = final.result
        if self._result_adapter is None:
            value: R = stored
            return value
        try:
            rebuilt: R = self._result_adapter.validate_python(stored)
        except pydantic.ValidationError as exc:
            exc.add_note(
                f"the stored result of workflow {self.name} ({self.id}) does not match its "
                "last step's return annotation (did the task change since?)"
            )
            raise
        return rebuilt

    @property
    def created_at(self) -> datetime:
        return self._loaded().created_at

    @property
    def finished_at(self) -> datetime | None:
        """When the last step completed, or when the workflow was canceled."""
        return self._loaded().finished_at

    @property
    def on_failure_task(self) -> TaskHandle[Any] | None:
        """The handle of the last ``on_failure`` task a failed step queued (None: none)."""
        task_id = self._loaded().on_failure_task_id
        if task_id is None:
            return None
        on_failure = self._loaded().on_failure or {}
        return TaskHandle(task_id, on_failure.get("task_name", ""), self._store)

    def wait(self, timeout: float | None = 60.0, poll_interval: float = 0.05) -> WorkflowHandle[R]:
        """Refresh until the workflow is done (completed, failed, canceled or paused); raise
        `TaskWaitTimeout` after ``timeout`` seconds."""
        if not poll_until(lambda: self.refresh().done, timeout, poll_interval):
            raise TaskWaitTimeout(
                f"workflow {self.name} ({self.id}) is still {self.status} after {timeout}s"
                f" (at step {self.current_step})"
            )
        return self

    def pause(self) -> bool:
        """Pause: the running step is stopped within about a second (its run recorded as
        interrupted by the pause, not counted against its retries) and held with the steps not
        started yet. False if it was paused already; `WorkflowStateError` if it is completed,
        canceled or failed."""
        changed = db.pause(self._store, self.id)
        self.refresh()
        return changed

    def resume(self) -> WorkflowStatus:
        """Go on: a paused workflow restarts its stopped step with the same arguments; a failed
        one queues its failed step again with its previous arguments and a fresh retry budget.
        Returns what it was (paused or failed); `WorkflowStateError` for any other status."""
        was = db.resume(self._store, self.id)
        self.refresh()
        return was

    def cancel(self) -> bool:
        """End it (canceled): steps queued or held are canceled, running ones stopped, nothing
        more starts. False if it had completed or was canceled already."""
        changed = db.cancel(self._store, self.id)
        self.refresh()
        return changed
