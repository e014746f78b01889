"""What the ``hyrex-like`` commands share: exit codes, flag types (durations, task ids), and
loading the app's registry on the database and schema the flags name."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..durations import parse_duration
from ..registry import HyrexRegistry

EXIT_USAGE = 2
EXIT_NOTHING_CHANGED = 1
"""cancel/retry: the task exists but is in no status the command changes."""

APP_HELP = (
    "import path of the registry: 'module:attribute', or 'module' "
    "when it holds exactly one HyrexRegistry"
)


def duration(text: str) -> float:
    """A duration flag: ``7d``, ``12h``, ``30m``, ``90s`` or seconds (`parse_duration`)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> float:
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return seconds


def task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task id: expected a UUID such as "
            "0b7e4f2c-1a5d-4c3e-9f00-5d2e8c6a1b34"
        ) from None


def load_app(args: argparse.Namespace) -> HyrexRegistry:
    """The app's registry (``args.app``) on the database and schema of the flags."""
    from ..worker.app import load_registry

    sys.path.insert(0, os.getcwd())  # like `python -m`: apps in the working directory import
    registry = load_registry(args.app)
    registry.configure(database_url=args.database_url, schema_name=args.schema)
    return registry


def registry(args: argparse.Namespace) -> HyrexRegistry:
    """A registry on the database and schema of the flags, for commands that import no app."""
    return HyrexRegistry(args.database_url, schema=args.schema)


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``header`` and ``rows`` as lines of columns padded to their widest cell, two spaces
    apart."""
    every = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[c]) for r in every) for c in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in every
    ]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print `table_lines`."""
    for line in table_lines(header, rows):
        print(line)


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO text and UUIDs, enums and the like as ``str``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def age(seconds: float | None) -> str:
    """A short age: ``-`` (none), ``42s``, ``17m``, ``5h`` or ``3d``, rounded down."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ago(when: datetime | None, now: datetime) -> str:
    """How long before ``now`` ``when`` was (``12s ago``), or ``-``."""
    return "-" if when is None else f"{age((now - when).total_seconds())} ago"


def utc_time(when: datetime) -> str:
    """``when`` in UTC to the second, ISO with a ``Z``: ``2026-11-30T23:50:30Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
