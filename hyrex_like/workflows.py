"""Workflow definitions: steps (tasks) whose results feed the next steps, checked when defined.

Two ways to write one, the same `Workflow` either way::

    hy.workflow("archive_batch", steps=[inspect, archive.with_config(queue="q1"),
                                        step("again", inspect)])
    hy.workflow("etl", extract >> transform >> [load_a, load_b] >> report)

``>>`` works on tasks, ``with_config`` senders, `step` (a named step), graphs and lists (a
fan-out after a step, a fan-in before one). Every occurrence of a task is its own step, named
after the task unless `step` names it; names are unique, so a task used twice needs `step`.

The typed hand-off (`hyrex_like.workflow_types`): each step's parameter type must accept what
the step before it returns. A fan-in step (after several steps) receives one JSON object keyed
by the predecessor step names: its parameter is a Pydantic model with one field per
predecessor (other fields need defaults) or ``dict[str, X]`` with X accepting every
predecessor's return type. The sources (steps after none) all take the workflow's payload, so
they take the same type. Everything here is checked with no database.
"""

from __future__ import annotations

import heapq
import inspect
import json
import typing
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from pydantic import BaseModel, TypeAdapter

from .db import workflows as db_workflows
from .errors import InvalidTaskOption, WorkflowDefinitionError
from .ids import new_task_id as new_id
from .sending import _Sending
from .task_config import _UNSET, check_name
from .workflow_handle import WorkflowHandle
from .workflow_types import Flow as Flow
from .workflow_types import (
    Graph,
    Step,
    _Occurrence,
    accepts,
    fan_in_problem,
    mapping_value,
    step,
    type_name,
)

if typing.TYPE_CHECKING:
    from .registry import HyrexRegistry
    from .task import TaskDefinition

InT = TypeVar("InT")
OutT = TypeVar("OutT")

_MAX_PRIORITY = 10
_NIL = uuid.UUID(int=0)


class WorkflowFailure(BaseModel):
    """What a workflow's ``on_failure`` task receives when a step fails for good: the
    workflow, the step, its task and the error (as `TaskError` fields: type, message, ...)."""

    workflow_id: uuid.UUID
    workflow_name: str
    step: str
    task_id: uuid.UUID
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """One step of a defined workflow: ``index`` is its place in the definition (a topological
    order), ``after``/``next`` the names of the steps before and after it."""

    index: int
    name: str
    task: TaskDefinition[Any, Any]
    sender: _Sending[Any, Any]
    after: tuple[str, ...]
    next: tuple[str, ...]
    after_index: tuple[int, ...]
    next_index: tuple[int, ...]
    priority: int

    @property
    def fan_in(self) -> bool:
        return len(self.after) > 1


class Workflow(Generic[InT, OutT]):
    """A defined workflow: ``InT`` is what its first step(s) take, ``OutT`` what its final step
    returns. Built by ``hy.workflow(...)``; every check ran when it was built."""

    def __init__(
        self,
        registry: HyrexRegistry,
        name: str,
        steps: list[WorkflowStep],
        on_failure: TaskDefinition[Any, Any] | None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.steps = steps
        self.on_failure = on_failure

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={[s.name for s in self.steps]}>"

    @property
    def final(self) -> WorkflowStep:
        """The one step after which nothing runs: its result is the workflow's."""
        return self.steps[-1]

    @property
    def sources(self) -> list[WorkflowStep]:
        """The steps that take the workflow's payload (after no other step)."""
        return [s for s in self.steps if not s.after]

    @property
    def result_adapter(self) -> TypeAdapter[Any] | None:
        """The final step's result adapter (None: untyped result, as for a task)."""
        return self.final.task.result_adapter

    def step(self, name: str) -> WorkflowStep:
        """The step of that name (KeyError if none)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"workflow {self.name} has no step {name!r}")

    def steps_json(self) -> list[dict[str, Any]]:
        """The definition as stored in ``workflow.steps``: one object per step, by index. The
        queue, retries, timeout and backoff are what a send of the step's task (or sender)
        would write; a callable backoff is evaluated now."""
        out = []
        for s in self.steps:
            # the row a plain send of this step's sender would write, for its options
            row = s.sender._row(_NIL, "null", s.sender.config.backoff_schedule(), None)
            out.append(
                {
                    "name": s.name,
                    "task_name": s.task.name,
                    "queue": row.queue,
                    "priority": s.priority,
                    "max_retries": row.max_retries,
                    "timeout_seconds": row.timeout_seconds,
                    "backoff_seconds": list(row.backoff_seconds),
                    "after": list(s.after_index),
                    "next": list(s.next_index),
                    "fan_in": s.fan_in,
                }
            )
        return out

    def payload_json(self, payload: Any = _UNSET) -> str:
        """Validate the workflow's payload as its first step's task does on a send (same
        errors) and return the JSON text every source step receives."""
        source = self.sources[0]
        try:
            return source.task.dump_payload(payload)
        except Exception as exc:
            exc.add_note(f"(the payload of workflow {self.name}, for its step {source.name})")
            raise

    source_payload_json = payload_json

    def on_failure_json(self) -> dict[str, Any] | None:
        """The ``on_failure`` task as stored in ``workflow.on_failure`` (its send options)."""
        if self.on_failure is None:
            return None
        task = self.on_failure
        row = task._row(_NIL, "null", task.config.backoff_schedule(), None)
        return {
            "task_name": task.name,
            "queue": row.queue,
            "priority": row.priority,
            "max_retries": row.max_retries,
            "timeout_seconds": row.timeout_seconds,
            "backoff_seconds": list(row.backoff_seconds),
        }

    def send(
        self,
        payload: InT = _UNSET,  # _UNSET: a first step with no payload
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> WorkflowHandle[OutT]:
        """Start a run: the payload is checked as the first step's task checks it, then the
        workflow row and its first steps' tasks are written in one statement (on ``conn``, in
        the caller's transaction, if given). Returns its `WorkflowHandle`."""
        body = self.payload_json(payload)
        wid = new_id()
        params = {
            "id": str(wid),
            "name": self.name,
            "steps": json.dumps(self.steps_json()),
            "args": body,
            "on_failure": None if self.on_failure is None else json.dumps(self.on_failure_json()),
            "sources": [s.index for s in self.sources],
        }
        store = self.registry.store
        db_workflows.insert_workflow(store, params, conn)
        if conn is None:
            store.wake_workers()
        return self.handle(wid)

    def handle(self, workflow_id: uuid.UUID) -> WorkflowHandle[OutT]:
        """A handle for a run of this workflow (not read until used)."""
        adapters = {s.name: s.task.result_adapter for s in self.steps}
        return WorkflowHandle(
            workflow_id, self.name, self.registry.store, self.result_adapter, adapters
        )


def define_workflow(
    registry: HyrexRegistry,
    name: str,
    steps: Sequence[object] | Graph | None = None,
    graph: object = None,
    on_failure: object = None,
) -> Workflow[Any, Any]:
    """Build and check a workflow (what ``hy.workflow`` calls): ``steps`` a list (run in that
    order; a list inside it is a fan-out), ``graph`` a ``>>`` graph (or a single task). Raises
    `WorkflowDefinitionError` naming the workflow, the steps and the types."""
    try:
        check_name("workflow name", name)
    except InvalidTaskOption as exc:
        raise WorkflowDefinitionError(f"workflow {name!r}: {exc}") from None
    if steps is not None and graph is not None:
        raise WorkflowDefinitionError(f"workflow {name}: give steps or a graph, not both")
    shape = steps if steps is not None else graph
    if shape is None or (isinstance(shape, list | tuple) and not shape):
        raise WorkflowDefinitionError(f"workflow {name}: has no steps; give at least one")
    if isinstance(shape, list | tuple):
        built = Graph.of(shape[0])
        for item in shape[1:]:
            built = built >> Graph.of(item)
    else:
        built = Graph.of(shape)
    return _Builder(registry, name, built).build(on_failure)


def _fails(workflow: str, problem: str) -> WorkflowDefinitionError:
    return WorkflowDefinitionError(f"workflow {workflow}: {problem}")


class _Builder:
    """Order, check and number the steps of one graph."""

    def __init__(self, registry: HyrexRegistry, name: str, graph: Graph) -> None:
        self.registry, self.name, self.graph = registry, name, graph

    def _label(self, node: _Occurrence) -> str:
        task = node.sender.definition.name
        return f"step {node.name}" + (f" (task {task})" if task != node.name else "")

    def build(self, on_failure: object) -> Workflow[Any, Any]:
        nodes = self._order()
        index = {id(n): i for i, n in enumerate(nodes)}
        after: list[list[int]] = [[] for _ in nodes]
        succ: list[list[int]] = [[] for _ in nodes]
        for a, b in self.graph.edges:
            i, j = index[id(a)], index[id(b)]
            if i not in after[j]:
                after[j].append(i)
                succ[i].append(j)
        for lst in after + succ:
            lst.sort()
        sinks = [nodes[i].name for i in range(len(nodes)) if not succ[i]]
        if len(sinks) != 1:
            raise _fails(
                self.name,
                f"has {len(sinks)} final steps ({', '.join(sinks)}); a workflow ends in one step "
                "(its result): add a step after them that takes their results (a fan-in)",
            )
        self._check_sources(nodes, after)
        for j, node in enumerate(nodes):
            if after[j]:
                self._check_hand_off(node, [nodes[i] for i in after[j]])
        depth = [0] * len(nodes)
        for j in range(len(nodes)):  # topological order: predecessors come first
            depth[j] = max((depth[i] + 1 for i in after[j]), default=0)
        steps = [
            WorkflowStep(
                index=j,
                name=node.name,
                task=node.sender.definition,
                sender=node.sender,
                after=tuple(nodes[i].name for i in after[j]),
                next=tuple(nodes[i].name for i in succ[j]),
                after_index=tuple(after[j]),
                next_index=tuple(succ[j]),
                priority=node.sender.priority_override or min(depth[j] + 1, _MAX_PRIORITY),
            )
            for j, node in enumerate(nodes)
        ]
        return Workflow(self.registry, self.name, steps, self._on_failure(on_failure))

    def _order(self) -> list[_Occurrence]:
        """The steps in a topological order, ties in the order they were written; checks
        each step's task and name on the way."""
        nodes = self.graph.nodes
        seen: dict[str, _Occurrence] = {}
        for node in nodes:
            task = node.sender.definition
            if self.registry.get_task(task.name) is not task:
                raise _fails(
                    self.name,
                    f"{self._label(node)}: task {task.name} is not registered with this "
                    "registry; a workflow's steps are tasks of the registry that defines it",
                )
            if node.sender.send_options is not None:
                raise _fails(
                    self.name,
                    f"{self._label(node)}: with_config(delay/run_at/idempotency_key) does not "
                    "apply to a workflow step (a step is queued when the steps before it end)",
                )
            if node.name in seen:
                raise _fails(
                    self.name,
                    f"two steps are named {node.name!r}; name one with "
                    f'step("another_name", {node.sender.definition.name})',
                )
            seen[node.name] = node
        position = {id(n): i for i, n in enumerate(nodes)}
        waiting = {id(n): 0 for n in nodes}
        for _, b in self.graph.edges:
            waiting[id(b)] += 1
        ready = [position[id(n)] for n in nodes if waiting[id(n)] == 0]
        heapq.heapify(ready)
        order: list[_Occurrence] = []
        while ready:
            node = nodes[heapq.heappop(ready)]
            order.append(node)
            for a, b in self.graph.edges:
                if a is node:
                    waiting[id(b)] -= 1
                    if waiting[id(b)] == 0:
                        heapq.heappush(ready, position[id(b)])
        if len(order) != len(nodes):
            stuck = [n.name for n in nodes if waiting[id(n)] > 0]
            raise _fails(self.name, f"steps {', '.join(stuck)} form a cycle")
        return order

    def _check_sources(self, nodes: list[_Occurrence], after: list[list[int]]) -> None:
        sources = [nodes[j] for j in range(len(nodes)) if not after[j]]
        first = sources[0].sender.definition
        for other in sources[1:]:
            d = other.sender.definition
            if (d.param_name is None) != (first.param_name is None) or (
                d.payload_annotation != first.payload_annotation
            ):
                raise _fails(
                    self.name,
                    f"its first steps take the workflow's payload, so they take one type: "
                    f"{self._label(sources[0])} takes {_param(first)} but {self._label(other)} "
                    f"takes {_param(d)}",
                )

    def _check_hand_off(self, node: _Occurrence, preds: list[_Occurrence]) -> None:
        d = node.sender.definition
        if d.param_name is None:
            raise _fails(
                self.name,
                f"{self._label(node)} takes no payload, so it cannot follow "
                f"{', '.join(self._label(p) for p in preds)} (which hand it their result)",
            )
        for p in preds:
            if p.sender.definition.return_annotation is inspect.Signature.empty:
                raise _fails(
                    self.name,
                    f"{self._label(p)} has no return annotation, so what it hands to "
                    f"{self._label(node)} cannot be checked: annotate the return type of "
                    f"{p.sender.definition.__name__}",
                )
        param = d.payload_annotation
        if len(preds) == 1:
            ret = preds[0].sender.definition.return_annotation
            if not accepts(param, ret):
                raise _fails(
                    self.name,
                    f"{self._label(node)} takes {type_name(param)} but "
                    f"{self._label(preds[0])} before it returns {type_name(ret)}",
                )
            return
        problem = fan_in_problem(
            self._label(node),
            param,
            [(p.name, self._label(p), p.sender.definition.return_annotation) for p in preds],
        )
        if problem is not None:
            raise _fails(self.name, problem)

    def _on_failure(self, handler: object) -> TaskDefinition[Any, Any] | None:
        if handler is None:
            return None
        if not isinstance(handler, _Sending):
            raise _fails(self.name, f"on_failure must be a task, got {type(handler).__name__}")
        task = handler.definition
        if handler is not task:
            raise _fails(
                self.name,
                f"on_failure={task.name}.with_config(...): give the task itself (it runs with "
                "its registered options)",
            )
        if self.registry.get_task(task.name) is not task:
            raise _fails(
                self.name, f"on_failure task {task.name} is not registered with this registry"
            )
        param = task.payload_annotation
        value = mapping_value(param) if task.param_name is not None else None
        if task.param_name is None or not (
            accepts(param, WorkflowFailure) or (value is not None and accepts(value, object))
        ):
            raise _fails(
                self.name,
                f"on_failure task {task.name} takes {_param(task)}; it receives a "
                "WorkflowFailure (workflow_id, workflow_name, step, task_id, error): annotate "
                "its parameter WorkflowFailure",
            )
        return task


def _param(task: TaskDefinition[Any, Any]) -> str:
    return "no payload" if task.param_name is None else type_name(task.payload_annotation)


__all__ = [
    "Graph",
    "Step",
    "Workflow",
    "WorkflowFailure",
    "WorkflowStep",
    "define_workflow",
    "step",
]
