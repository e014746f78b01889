"""What a payload or a result may be: JSON a worker can load back as it was sent.

A checked serializer (NaN and Infinity never become a silent null) and the finders that name
the problem in hostile input: a NUL, a lone surrogate, a non-finite number, too deep a nesting.
"""

from __future__ import annotations

import functools
import json
import math
import re
import typing
from collections.abc import Callable
from typing import Any, Protocol

import pydantic_core
from pydantic import BaseModel, TypeAdapter
from pydantic_core import SchemaSerializer

from .errors import PayloadNotSerializable

# An escaped NUL in JSON text (an even number of backslashes before it means it is literal).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# NaN, Infinity or -Infinity where our compact dumps put a value: not inside a string, mostly.
_JSON_NON_FINITE = re.compile(rb"(?:\A|[:\[,])-?(?:NaN|Infinity)")

MAX_NESTING_DEPTH = 201
"""The deepest level a value may sit at in a payload or result, as the worker's JSON parser
(pydantic's) counts: the payload is level 1, so a value sits inside at most 200 arrays/objects.
Sends and stored results refuse deeper ones, as that parser would: every task sent can be loaded."""

_FFFD = "\ufffd".encode()  # what pydantic writes for a lone surrogate in a dict key
_ANY_SERIALIZER = SchemaSerializer(pydantic_core.core_schema.any_schema())


class _Serializer(Protocol):
    """What `TaskDefinition` needs of a serializer (a `SchemaSerializer` is one)."""

    def to_json(self, value: Any) -> bytes: ...
    def to_python(self, value: Any) -> Any: ...


class _NonFinite(ValueError):
    """A NaN or an Infinity found by `_CheckedSerializer` (its message is the problem)."""


class _CheckedSerializer:
    """The adapter's own serializer plus a search for non-finite numbers it wrote as null:
    pydantic 2.11 and 2.12 build a model's prebuilt serializer into ours, ignoring our
    ``ser_json_inf_nan``, with no public way to opt out. The search runs only when the JSON
    holds a null (so a model that chose "strings" is refused if its payload holds a null)."""

    def __init__(self, adapter: TypeAdapter[Any]) -> None:
        self._serializer = adapter.serializer

    def to_json(self, value: Any) -> bytes:
        data = self._serializer.to_json(value)
        if b"null" in data:
            found = _find(self._serializer.to_python(value), _non_finite, keys=False)
            if found is not None:
                raise _NonFinite(_non_finite_problem(*found))
        return data

    def to_python(self, value: Any) -> Any:
        return self._serializer.to_python(value)


def _prebuilt_opt_out() -> bool:
    """Whether `SchemaSerializer` takes ``_use_prebuilt`` (pydantic >= 2.13)."""
    try:
        SchemaSerializer(pydantic_core.core_schema.any_schema(), None, _use_prebuilt=False)
    except TypeError:
        return False
    return True


_PREBUILT_OPT_OUT = _prebuilt_opt_out()

_SERIALIZER_MODE: typing.Literal["auto", "schema", "checked"] = "auto"
"""How `_json_serializer` builds: "schema" (our own `SchemaSerializer`, the fast path),
"checked" (`_CheckedSerializer`), or "auto": "schema" where it writes NaN as NaN, found out
once (tests set this to force a path)."""


@functools.cache
def _schema_serializer_works() -> bool:
    """Whether a `SchemaSerializer` built from a model's schema honours our setting: true with
    ``_use_prebuilt=False`` (pydantic >= 2.13) and before prebuilt serializers (<= 2.10)."""

    class Inner(BaseModel):
        value: float

    class Probe(BaseModel):  # a model inside a model: only the inner one came prebuilt
        value: float
        inner: Inner

    value = Probe(value=math.nan, inner=Inner(value=math.nan))
    return _schema_serializer(TypeAdapter(Probe)).to_json(value).count(b"NaN") == 2


def _json_serializer(adapter: TypeAdapter[Any]) -> _Serializer:
    """The adapter's serializer, writing NaN and Infinity as JSON constants (not null), which
    `_json_problem` then refuses; or, where pydantic cannot (see `_CheckedSerializer`), one
    that refuses them itself."""
    mode = _SERIALIZER_MODE
    if mode == "auto":
        mode = "schema" if _schema_serializer_works() else "checked"
    if mode == "checked":
        return _CheckedSerializer(adapter)
    return _schema_serializer(adapter)


def _schema_serializer(adapter: TypeAdapter[Any]) -> SchemaSerializer:
    """The adapter's schema as a serializer with ``ser_json_inf_nan="constants"``.

    Models carry their own config in the schema, so each gets the setting too, unless it
    chose ``ser_json_inf_nan`` itself (then its choice stands: e.g. "strings" round-trips).
    """
    schema = _inf_nan_as_constants(adapter.core_schema)
    config: Any = {"ser_json_inf_nan": "constants"}
    if _PREBUILT_OPT_OUT:
        # Not the models' prebuilt serializers: those would ignore the setting.
        return SchemaSerializer(schema, config, _use_prebuilt=False)
    return SchemaSerializer(schema, config)


def _inf_nan_as_constants(node: Any) -> Any:
    """A copy of a core schema whose every config sets ``ser_json_inf_nan`` if unset."""
    if isinstance(node, dict):
        out = {key: _inf_nan_as_constants(value) for key, value in node.items()}
        if isinstance(out.get("config"), dict):
            out["config"] = {"ser_json_inf_nan": "constants", **out["config"]}
        return out
    if isinstance(node, list):
        return [_inf_nan_as_constants(value) for value in node]
    if isinstance(node, tuple):
        return tuple(_inf_nan_as_constants(value) for value in node)
    return node


def _serialization_problem(exc: Exception, plain: Callable[[], Any]) -> str:
    """The serializer's refusal, said in our terms where we can (error path only)."""
    message = str(exc)
    # pydantic's own limit (255), past ours; before 2.13 it said "depth exceeded"
    if "serialization depth" in message or "depth exceeded" in message:
        return f"it is nested deeper than MAX_NESTING_DEPTH ({MAX_NESTING_DEPTH} levels)"
    if "surrogates not allowed" in message:
        try:
            value = plain()
        except Exception:
            return message
        found = _find(value, _has_surrogate, keys=True)
        if found is not None:
            return _surrogate_key_problem(*found)
        found = _find(value, _has_surrogate, keys=False)
        if found is not None:
            return (
                f"the text at {found[0]} holds a lone surrogate, which is not valid Unicode; "
                "encode such data first (e.g. base64)"
            )
    return message


def _surrogate_key_problem(path: str, key: str) -> str:
    return (
        f"the dict key {key!r} at {path} holds a lone surrogate, which is not valid "
        "Unicode (stored, it would become U+FFFD); encode such data first (e.g. base64)"
    )


def checked_json(value: Any, serializer: _Serializer | None, doing: str) -> bytes:
    """``value`` as JSON text (by ``serializer``, else as plain data), refused unless it can be
    stored and read back as it is: `PayloadNotSerializable` saying ``doing`` ("task x returned
    a value") and what is wrong (NUL, NaN or Infinity, a lone surrogate, too deep, a type JSON
    has no form for). The one rule for results and progress values."""
    plain = serializer or _ANY_SERIALIZER
    try:
        if serializer is not None:
            data = serializer.to_json(value)
        else:
            data = pydantic_core.to_json(value, inf_nan_mode="constants")
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        why = _serialization_problem(exc, lambda: plain.to_python(value))
        raise PayloadNotSerializable(
            f"{doing} that cannot be stored as JSON ({type(value).__name__}): {why}"
        ) from None
    problem = _json_problem(data, lambda: plain.to_python(value))
    if problem is not None:
        raise PayloadNotSerializable(f"{doing} that cannot be stored as JSON: {problem}")
    return data


def _json_problem(data: bytes, plain: Callable[[], Any]) -> str | None:
    """Why ``data`` (our own JSON dump) cannot be stored and loaded back as it is, or None.

    Each check is a substring scan or two in the common case; the exact check runs only
    when a scan finds a suspect. ``plain`` gives the value as Python data (keys unchanged).
    """
    # The substring first: the regex, with its look-behind, is slow even on a short text.
    if b"\\u0000" in data and _JSON_NUL.search(data):
        return "it contains a NUL character (\\u0000) in a string; PostgreSQL JSON cannot store it"
    # Opening brackets (even inside strings) bound the depth: only a payload with enough of
    # them is parsed in full, by the worker's parser, so the limit is exactly what it reads.
    if data.count(b"[") + data.count(b"{") >= MAX_NESTING_DEPTH:
        try:
            pydantic_core.from_json(data, cache_strings=False)
        except ValueError as exc:
            if "recursion limit" in str(exc):
                return (
                    f"it is nested {_depth(data)} levels deep; the limit is MAX_NESTING_DEPTH "
                    f"({MAX_NESTING_DEPTH}), the deepest a worker's JSON parser reads"
                )
            return f"the worker's JSON parser cannot read it: {exc}"
    # Our dumps are compact: a NaN or Infinity constant follows ":", "[" or "," (or is the
    # whole text). The words inside a string ("Infinity War") rarely do, and cost one search.
    if (b"NaN" in data or b"Infinity" in data) and _JSON_NON_FINITE.search(data):
        found = _find(json.loads(data), _non_finite, keys=False)
        if found is not None:
            return _non_finite_problem(*found)
    if _FFFD in data:
        found = _find(plain(), _has_surrogate, keys=True)
        if found is not None:
            return _surrogate_key_problem(*found)
    return None


def _non_finite_problem(path: str, number: float) -> str:
    return (
        f"{path} is {number!r}, which JSON cannot hold (stored, it would become null); "
        "send a finite number, None or a string"
    )


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _has_surrogate(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find(value: Any, match: Callable[[Any], bool], *, keys: bool) -> tuple[str, Any] | None:
    """The first dict key (``keys``) or leaf that ``match`` accepts, and its path (``$.a[2]``)."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            children = []
            for key, child in node.items():
                if keys and match(key):
                    return path, key
                named = isinstance(key, str) and key.isidentifier()
                children.append((f"{path}.{key}" if named else f"{path}[{key!r}]", child))
            stack.extend(reversed(children))
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(node)]))
        elif not keys and match(node):
            return path, node
    return None


def _depth(data: bytes) -> int:
    """The nesting depth of JSON text as MAX_NESTING_DEPTH counts it: the level of its deepest
    value (for the error message only: it is slow)."""
    depth = deepest = 0
    for token in re.finditer(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]|[^\s,:\[\]{}"]+', data):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1  # a container is a value at this level; its items are one below
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
        else:  # a string (a key too: its value is as deep), number, true, false or null
            deepest = max(deepest, depth + 1)
    return deepest
