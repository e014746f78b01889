"""Decoration-time checks of a task function's signature: one typed payload parameter, and
payload and return annotations that validate and store as JSON."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter

from .errors import TaskDefinitionError


def _inspect_function(
    fn: Callable[..., Any], name: str
) -> tuple[str | None, Any, TypeAdapter[Any] | None, TypeAdapter[Any] | None]:
    """Decoration-time checks of the signature; returns (param name, its annotation, payload
    & result adapters)."""
    if not callable(fn):
        raise TaskDefinitionError(f"@hy.task needs a function, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"task {name}: cannot read the signature: {exc}") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TaskDefinitionError(
            f"task {name}: cannot resolve its type annotations ({type(exc).__name__}: {exc})"
        ) from None
    params = list(sig.parameters.values())
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            raise TaskDefinitionError(
                f"task {name}: parameter *{p.name} is not allowed; a task takes one typed "
                "payload parameter (use a Pydantic model for several values)"
            )
        if p.kind is p.KEYWORD_ONLY:
            # the payload is passed positionally (by the worker and by a direct call)
            raise TaskDefinitionError(
                f"task {name}: parameter {p.name!r} is keyword-only; the payload parameter "
                "must accept a positional argument"
            )
        if p.kind is p.VAR_KEYWORD:
            raise TaskDefinitionError(
                f"task {name}: parameter **{p.name} is not allowed; a task takes one typed "
                "payload parameter (use a Pydantic model for several values)"
            )
        if p.name not in hints:
            raise TaskDefinitionError(
                f"task {name}: parameter {p.name!r} has no type annotation; every task "
                "parameter must be annotated (e.g. a Pydantic model or dict)"
            )
    if len(params) > 1:
        raise TaskDefinitionError(
            f"task {name}: takes {len(params)} parameters ({', '.join(p.name for p in params)}); "
            "a task takes one typed payload parameter: bundle them in a Pydantic model"
        )
    payload_adapter = None
    param_name = None
    annotation = None
    if params:
        param_name = params[0].name
        annotation = hints[param_name]
        payload_adapter = _adapter(name, f"parameter {param_name!r}", annotation)
    result_adapter = None
    ret = hints.get("return")
    if ret is not None and ret is not type(None):
        ret = _unwrap_awaitable(ret)
        if ret is not Any and ret is not type(None):
            result_adapter = _adapter(name, "return annotation", ret)
    return param_name, annotation, payload_adapter, result_adapter


def _unwrap_awaitable(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Awaitable, typing.Coroutine) or str(origin).endswith("Coroutine'>"):
        args = typing.get_args(annotation)
        return args[-1] if args else Any
    return annotation


def _adapter(task: str, where: str, annotation: Any) -> TypeAdapter[Any]:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        adapter.json_schema()  # proves the type round-trips through JSON
    except Exception as exc:
        raise TaskDefinitionError(
            f"task {task}: {where} has type {annotation!r}, which cannot be validated and "
            f"stored as JSON ({type(exc).__name__}); use a Pydantic model or JSON types"
        ) from None
    return adapter


def _return_annotation(fn: Callable[..., Any]) -> Any:
    """The declared return type of a task function (an awaitable's result for a coroutine
    function), or ``inspect.Signature.empty`` when it has none: a workflow checks that what a
    step returns fits the next step's parameter. ``-> None`` is ``NoneType``."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # resolved at decoration already; a function changed since: no type
        return inspect.Signature.empty
    if "return" not in hints:
        return inspect.Signature.empty
    return _unwrap_awaitable(hints["return"])
