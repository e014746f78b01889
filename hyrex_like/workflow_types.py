"""The shape and types of a workflow: the ``>>`` graph of its steps (`Graph`, `Step`, `step`)
and the typed hand-off rules: does a step's parameter type accept what the step before it
returns? Checked when the workflow is defined, on annotations (no values).

A parameter type ``P`` accepts a return type ``R`` when: ``P`` is ``Any`` or ``object``; ``R``
is ``Any`` (the step opted out of typing); they are equal; ``R`` is a subclass of ``P`` (a
Pydantic model's subclass too); ``R`` is ``int`` and ``P`` is ``float``; ``R`` is a ``Literal``
whose values ``P`` accepts; ``R`` is a Union every member of which ``P`` accepts; ``P`` is a
Union (or Optional) one member of which accepts ``R``; both are the same generic container (or
``R``'s is a subclass of ``P``'s, e.g. ``list`` into ``Sequence``) with arguments accepted
pairwise, or ``P`` is the bare container. Anything else is refused.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeAlias

from pydantic import BaseModel

from .errors import InvalidTaskOption, WorkflowDefinitionError
from .sending import _Sending
from .task_config import check_name

if typing.TYPE_CHECKING:
    from .task import TaskDefinition

_UNIONS: tuple[Any, ...] = (typing.Union, types.UnionType)
_ALIAS: Any = getattr(typing, "TypeAliasType", None)


class Step:
    """A step with a name of its own: ``step("again", inspect)``. Without one, a step is named
    after its task. It chains with ``>>`` as a task does."""

    def __init__(self, name: str, task: _Sending[Any, Any]) -> None:
        if not isinstance(task, _Sending):
            raise WorkflowDefinitionError(
                f"step {name!r}: needs a task or task.with_config(...), got {type(task).__name__}"
            )
        try:
            self.name = check_name("step name", name)
        except InvalidTaskOption as exc:
            raise WorkflowDefinitionError(f"step of task {task.definition.name}: {exc}") from None
        self.sender = task

    @property
    def task(self) -> TaskDefinition[Any, Any]:
        return self.sender.definition

    def __repr__(self) -> str:
        return f"<Step {self.name} task={self.task.name}>"

    def __rshift__(self, other: Flow) -> Graph:
        return Graph.of(self) >> other

    def __rrshift__(self, other: Sequence[object]) -> Graph:
        return Graph.of(other) >> self


def step(name: str, task: _Sending[Any, Any]) -> Step:
    """Name a step (default: the task's name), e.g. to use one task twice in a workflow."""
    return Step(name, task)


Node: TypeAlias = "_Sending[Any, Any] | Step"
Flow: TypeAlias = "_Sending[Any, Any] | Step | Graph | Sequence[_Sending[Any, Any] | Step | Graph]"


class _Occurrence:
    """One place a task stands in a graph (compared by identity: a task written twice is two
    steps)."""

    __slots__ = ("name", "sender")

    def __init__(self, name: str, sender: _Sending[Any, Any]) -> None:
        self.name = name
        self.sender = sender


class Graph:
    """Steps and the edges between them, as ``a >> b >> [c, d] >> e`` builds them; ``heads``
    are the steps an edge into this graph reaches, ``tails`` those an edge out of it leaves."""

    def __init__(
        self,
        nodes: tuple[_Occurrence, ...],
        edges: tuple[tuple[_Occurrence, _Occurrence], ...],
        heads: tuple[_Occurrence, ...],
        tails: tuple[_Occurrence, ...],
    ) -> None:
        self.nodes, self.edges, self.heads, self.tails = nodes, edges, heads, tails

    @classmethod
    def of(cls, item: object) -> Graph:
        """A graph of a task, sender, step, graph, or a list of them (side by side)."""
        if isinstance(item, Graph):
            return item
        if isinstance(item, _Sending | Step):
            name = item.name if isinstance(item, Step) else item.definition.name
            sender = item.sender if isinstance(item, Step) else item
            node = _Occurrence(name, sender)
            return cls((node,), (), (node,), (node,))
        if isinstance(item, list | tuple):
            if not item:
                raise WorkflowDefinitionError("an empty list cannot be a workflow step")
            parts = [cls.of(x) for x in item]
            return cls(
                _union(p.nodes for p in parts),
                tuple(e for p in parts for e in p.edges),
                tuple(n for p in parts for n in p.heads),
                tuple(n for p in parts for n in p.tails),
            )
        raise WorkflowDefinitionError(
            f"a workflow step must be a task, task.with_config(...), step(...) or a list of "
            f"them, got {type(item).__name__}"
        )

    def __rshift__(self, other: Flow) -> Graph:
        after = Graph.of(other)
        links = tuple((t, h) for t in self.tails for h in after.heads)
        return Graph(
            _union((self.nodes, after.nodes)),
            self.edges + after.edges + links,
            self.heads,
            after.tails,
        )

    def __rrshift__(self, other: Sequence[object]) -> Graph:
        return Graph.of(other) >> self

    def __repr__(self) -> str:
        return f"<Graph {' '.join(n.name for n in self.nodes)}>"


def _union(groups: typing.Iterable[tuple[_Occurrence, ...]]) -> tuple[_Occurrence, ...]:
    seen: dict[int, _Occurrence] = {}
    for group in groups:
        for node in group:
            seen.setdefault(id(node), node)
    return tuple(seen.values())


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` is ``X``; a ``NewType`` is its base; ``None`` is ``NoneType``."""
    while True:
        if tp is None:
            return type(None)
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        elif _ALIAS is not None and isinstance(tp, _ALIAS):  # ``type X = ...`` (3.12)
            tp = tp.__value__
        else:
            return tp


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The members of a Union (``X | Y``, ``Optional[X]``), or None for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) in _UNIONS else None


def accepts(param: Any, ret: Any) -> bool:
    """True if a parameter annotated ``param`` takes any value of type ``ret``."""
    param, ret = _strip(param), _strip(ret)
    if param is Any or param is object or ret is Any:
        return True
    if param == ret:
        return True
    ret_members = _members(ret)
    if ret_members is not None:
        return all(accepts(param, m) for m in ret_members)
    param_members = _members(param)
    if param_members is not None:
        return any(accepts(m, ret) for m in param_members)
    if typing.get_origin(ret) is typing.Literal:
        if typing.get_origin(param) is typing.Literal:
            return set(typing.get_args(ret)) <= set(typing.get_args(param))
        return all(accepts(param, type(v)) for v in typing.get_args(ret))
    if isinstance(param, type) and isinstance(ret, type):
        if ret is int and param is float:
            return True
        return issubclass(ret, param)
    return _generic_accepts(param, ret)


def _generic_accepts(param: Any, ret: Any) -> bool:
    """``list[int]`` into ``list[float]``, ``Sequence[int]`` or ``list``; ``dict[str, A]`` into
    ``Mapping[str, B]`` when B accepts A; a tuple's arguments pairwise."""
    p_origin = typing.get_origin(param) or (param if isinstance(param, type) else None)
    r_origin = typing.get_origin(ret)
    if p_origin is None or r_origin is None or not isinstance(r_origin, type):
        return False
    if not isinstance(p_origin, type) or not issubclass(r_origin, p_origin):
        return False
    p_args, r_args = typing.get_args(param), typing.get_args(ret)
    if not p_args:  # a bare container (list, dict, Sequence) takes any of its kind
        return True
    if r_origin is tuple or p_origin is tuple:
        if len(p_args) == 2 and p_args[1] is Ellipsis:
            items = r_args[:-1] if len(r_args) == 2 and r_args[1] is Ellipsis else r_args
            return all(accepts(p_args[0], a) for a in items)
        if len(p_args) != len(r_args) or Ellipsis in r_args:
            return False
        return all(accepts(p, r) for p, r in zip(p_args, r_args, strict=True))
    if len(p_args) != len(r_args):
        return False
    return all(accepts(p, r) for p, r in zip(p_args, r_args, strict=True))


def type_name(tp: Any) -> str:
    """A type as a reader writes it: ``int``, ``list[Batch]``, ``Report | None``."""
    tp = _strip(tp) if tp is not None else tp
    if tp is type(None) or tp is None:
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__ if tp.__module__ != "builtins" else tp.__name__
    text = repr(tp)
    return text.replace("typing.", "").replace("collections.abc.", "")


def fan_in_fields(param: Any) -> dict[str, tuple[Any, bool]] | None:
    """A Pydantic model parameter's fields by the key a JSON object gives them (the alias if
    any): (annotation, required). None if ``param`` is no model class."""
    param = _strip(param)
    if not (isinstance(param, type) and issubclass(param, BaseModel)):
        return None
    return {
        (field.alias or name): (field.annotation, field.is_required())
        for name, field in param.model_fields.items()
    }


def mapping_value(param: Any) -> Any | None:
    """``X`` of a ``dict[str, X]`` / ``Mapping[str, X]`` parameter (``Any`` for a bare dict);
    None for any other type."""
    param = _strip(param)
    origin = typing.get_origin(param) or param
    if origin not in (dict, collections.abc.Mapping):
        return None
    args = typing.get_args(param)
    if not args:
        return Any
    if not accepts(args[0], str):
        return None
    return args[1]


def fan_in_problem(label: str, param: Any, preds: list[tuple[str, str, Any]]) -> str | None:
    """Why a step after several steps cannot take their results (None: it can). ``preds`` are
    (step name, label, return type); the step gets a JSON object keyed by step name."""
    names = ", ".join(name for name, _, _ in preds)
    fields = fan_in_fields(param)
    value = mapping_value(param)
    if fields is not None:
        for name, pred, ret in preds:
            if name not in fields:
                return (
                    f"{label} comes after {names}, so its model {type_name(param)} needs a "
                    f"field {name!r} for the result of {pred} (which returns {type_name(ret)})"
                )
            if not accepts(fields[name][0], ret):
                return (
                    f"{label}: field {name!r} of {type_name(param)} is "
                    f"{type_name(fields[name][0])} but {pred} returns {type_name(ret)}"
                )
        given = {name for name, _, _ in preds}
        extra = [f for f, (_, required) in fields.items() if required and f not in given]
        if extra:
            return (
                f"{label} comes after {names}, but its model {type_name(param)} also requires "
                f"{', '.join(extra)}: give those fields defaults"
            )
    elif value is not None:
        for _, pred, ret in preds:
            if not accepts(value, ret):
                return (
                    f"{label} takes {type_name(param)}, whose values are {type_name(value)}, "
                    f"but {pred} returns {type_name(ret)}"
                )
    elif not accepts(param, dict[str, Any]):
        return (
            f"{label} comes after several steps ({names}) and takes {type_name(param)}; a "
            "fan-in step takes a Pydantic model with one field per step before it (by step "
            "name) or dict[str, X]"
        )
    return None
