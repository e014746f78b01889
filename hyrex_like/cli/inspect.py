"""``hyrex-like workers`` and ``hyrex-like tasks show ID``: what the queue is doing, read from
the database without importing the app (human tables by default, ``--json`` for scripts)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..registry import HyrexRegistry
from .common import print_table, task_id


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The workers and tasks subcommands."""
    w = sub.add_parser(
        "workers",
        help="list the workers running now and those that ended lately",
        description="List the workers running now and those that stopped or were declared "
        "lost in the last --recent seconds, newest first: host, pid, status, processes, the "
        "tasks each holds as running, and when it last sent a heartbeat.",
    )
    w.add_argument(
        "--recent",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="also list workers that ended this long ago at most (default: %(default)s)",
    )
    w.add_argument("--json", action="store_true", help="one JSON array of objects")
    common(w)

    t = sub.add_parser("tasks", help="look at tasks", description="Look at tasks.")
    actions = t.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="one task with every run, its error and traceback",
        description="Show one task: its row (name, queue, status, payload, result, last "
        "error) and every run (attempt) with its status, worker, times, error and traceback. "
        "Exit code 2 for an unknown or malformed id.",
    )
    show.add_argument("task_id", metavar="ID", type=task_id, help="the task's id (a UUID)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    common(show)


def _registry(args: argparse.Namespace) -> HyrexRegistry:
    return HyrexRegistry(args.database_url, schema=args.schema)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)  # UUIDs and enums


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, (now - when).total_seconds())
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _workers(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        infos = hy.list_workers(recent=args.recent)
    finally:
        hy.close()
    if args.json:
        print(json.dumps([_jsonable(dataclasses.asdict(i)) for i in infos]))
        return 0
    if not infos:
        print(f"no worker is running, and none ended in the last {args.recent:g}s")
        return 0
    now = datetime.now(UTC)
    header = ("WORKER", "HOST", "PID", "STATUS", "PROCS", "RUNNING", "QUEUES", "HEARTBEAT")
    rows = [
        (
            str(i.id),
            i.hostname,
            str(i.pid),
            str(i.status),
            str(i.processes),
            str(i.running),
            ",".join(i.queues) or "*",
            _ago(i.heartbeat_at, now),
        )
        for i in infos
    ]
    print_table(header, rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_handle(args.task_id)  # TaskNotFound: exit 2 through main
        row = handle.row
        runs = handle.task_runs
    finally:
        hy.close()
    fields = dataclasses.asdict(row)
    if args.json:
        fields["runs"] = [run.model_dump() for run in runs]
        print(json.dumps(_jsonable(fields)))
        return 0
    for key in (
        "id",
        "task_name",
        "queue",
        "status",
        "priority",
        "attempt_count",
        "max_retries",
        "created_at",
        "started_at",
        "finished_at",
        "parent_id",
        "workflow_id",
    ):
        print(f"{key + ':':15} {_jsonable(fields[key])}")
    print(f"{'args:':15} {json.dumps(_jsonable(row.args))}")
    print(f"{'result:':15} {json.dumps(_jsonable(row.result))}")
    if row.last_error:
        print(f"{'last_error:':15} {json.dumps(_jsonable(row.last_error))}")
    print(f"runs: {len(runs)}")
    for run in runs:
        print(
            f"  attempt {run.attempt_number}: {run.status} on worker {run.worker_id}, "
            f"claimed {_jsonable(run.claimed_at)}, started {_jsonable(run.started_at)}, "
            f"finished {_jsonable(run.finished_at)}"
        )
        if run.error_type is not None:
            print(f"    error: {run.error_type}: {run.error_message}")
        if run.traceback:
            for line in run.traceback.rstrip().splitlines():
                print(f"    | {line}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    return _show(args)  # "show" is the one action so far


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "workers": _workers,
    "tasks": _tasks,
}
