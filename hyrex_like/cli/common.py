"""What the ``hyrex-like`` commands share: exit codes, flag types (durations, task ids), and
loading the app's registry on the database and schema the flags name."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence

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


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``header`` and ``rows`` as columns padded to their widest cell, two spaces apart."""
    every = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[c]) for r in every) for c in range(len(header))]
    for r in every:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
