"""The registry's workflow methods (`HyrexRegistry` inherits them): define a workflow, find a
run by id, list runs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .db import workflows as db_workflows
from .errors import InvalidTaskId, WorkflowDefinitionError
from .workflow_handle import WorkflowHandle
from .workflows import Workflow, define_workflow

if TYPE_CHECKING:
    from .db import Store


class WorkflowMethods:
    """``hy.workflow(...)``, ``hy.get_workflow(id)``, ``hy.list_workflows()``."""

    store: Store
    _workflows: dict[str, Workflow[Any, Any]]

    def workflow(
        self, name: str, steps: Sequence[object] | object, /, *, on_failure: object = None
    ) -> Workflow[Any, Any]:
        """Define a workflow: ``steps`` a list of tasks (``with_config`` senders, ``step(name,
        task)``) run one after the other, or a ``>>`` graph (``a >> [b, c] >> d``). Every check
        runs now (`WorkflowDefinitionError` naming the steps and types). ``on_failure``: a task
        taking `WorkflowFailure`, queued once each time a step fails for good. Annotate the
        result (``wf: Workflow[Batch, Report] = hy.workflow(...)``) for typed sends and
        results."""
        if name in self._workflows:
            raise WorkflowDefinitionError(
                f"workflow {name}: a workflow of that name is already defined in this registry"
            )
        wf = define_workflow(self, name, steps, None, on_failure)  # type: ignore[arg-type]
        self._workflows[name] = wf
        return wf

    @property
    def workflows(self) -> Mapping[str, Workflow[Any, Any]]:
        """Defined workflows by name."""
        return dict(self._workflows)

    def get_workflow(self, workflow_id: uuid.UUID | str) -> WorkflowHandle[Any]:
        """A handle for a workflow run by id (read now: `WorkflowNotFound` if there is none;
        `InvalidTaskId` if ``workflow_id`` is no UUID). Its result is typed when the workflow
        is defined in this registry."""
        try:
            wid = workflow_id if isinstance(workflow_id, uuid.UUID) else uuid.UUID(str(workflow_id))
        except ValueError:
            raise InvalidTaskId(
                f"workflow id {workflow_id!r} is not a UUID; pass the id of a workflow handle"
            ) from None
        handle: WorkflowHandle[Any] = WorkflowHandle(wid, "", self.store).refresh()
        defined = self.workflows.get(handle.name)
        return defined.handle(wid).refresh() if defined else handle

    def list_workflows(
        self,
        *,
        name: str | None = None,
        limit: int = 50,
        before: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[db_workflows.WorkflowSummary]:
        """Workflow runs, newest first, each with its summary status and current step;
        ``before`` (created_at, id) of the last one seen gives the next page."""
        return db_workflows.list_workflows(self.store, name=name, limit=limit, before=before)
