"""``hyrex-like cancel``, ``retry`` and ``prune``: changing tasks by id or by age, without
importing the app."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..durations import FORMS, format_duration
from ..registry import HyrexRegistry
from ..states import TASK_FINAL, TaskStatus
from .common import EXIT_NOTHING_CHANGED, duration, task_id

_FINAL_ORDER = tuple(s for s in TaskStatus if s in TASK_FINAL)  # completed, failed, canceled


def final_statuses(text: str) -> tuple[TaskStatus, ...]:
    """``completed,failed``: final statuses only (a queued or running task is never pruned)."""
    allowed = ", ".join(_FINAL_ORDER)
    chosen: list[TaskStatus] = []
    for word in (part.strip() for part in text.split(",")):
        if word not in {str(s) for s in TaskStatus}:
            raise argparse.ArgumentTypeError(
                f"unknown status {word!r}: expected a comma-separated list of {allowed}"
            )
        status = TaskStatus(word)
        if status not in TASK_FINAL:
            raise argparse.ArgumentTypeError(
                f"status {word!r} is not final: only finished tasks are pruned ({allowed})"
            )
        if status not in chosen:
            chosen.append(status)
    return tuple(chosen)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The cancel, retry and prune subcommands."""
    c = sub.add_parser(
        "cancel",
        help="cancel a task by id",
        description="Cancel a task: a queued one (delayed, or waiting for a retry) is canceled "
        "and never runs; a running one is stopped by its worker within about a second and ends "
        "canceled, never retried. Exit code 0 when canceled or its stop requested, 1 when it "
        "had already finished (nothing changes), 2 for an unknown or malformed id.",
    )
    c.add_argument("task_id", metavar="ID", type=task_id, help="the task's id (a UUID)")
    c.add_argument(
        "--children",
        action="store_true",
        help="also cancel the unfinished tasks sent from it, at any depth",
    )
    common(c)

    r = sub.add_parser(
        "retry",
        help="queue a failed or canceled task again",
        description="Queue a failed or canceled task again, with a fresh retry budget (its "
        "attempt numbers go on, its runs stay). Exit code 0 when queued, 1 when the task is "
        "not failed or canceled (nothing changes), 2 for an unknown or malformed id or when "
        "its idempotency key is held by another live task.",
    )
    r.add_argument("task_id", metavar="ID", type=task_id, help="the task's id (a UUID)")
    common(r)

    p = sub.add_parser(
        "prune",
        help="delete old finished tasks and their runs",
        description="Delete the tasks that finished (completed, failed or canceled) longer ago "
        "than --older-than, with their runs, in small batches (each its own short transaction, "
        "rows locked by others skipped), so that workers carry on meanwhile. The tasks of a "
        "tree (a task and those sent from it, at any depth) of which one is still queued or "
        "running stay.",
    )
    p.add_argument(
        "--older-than",
        required=True,
        type=duration,
        metavar="DURATION",
        help=f"how long ago the tasks finished: {FORMS} (a bare number is seconds; 0s: every "
        "finished task)",
    )
    p.add_argument(
        "--status",
        type=final_statuses,
        default=_FINAL_ORDER,
        metavar="STATUSES",
        help="comma-separated final statuses to prune (default: " + ",".join(_FINAL_ORDER) + ")",
    )
    common(p)


def _registry(args: argparse.Namespace) -> HyrexRegistry:
    """A registry with no tasks, on the database and schema of the flags: the admin commands
    work on any task by id, without importing the app."""
    return HyrexRegistry(args.database_url, schema=args.schema)


def _cancel(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_handle(args.task_id)  # TaskNotFound: exit 2 through main
        changed = dict(hy.store.cancel(handle.id, args.children))
        handle.refresh()
    finally:
        hy.close()
    mine = changed.pop(handle.id, None)
    if mine is TaskStatus.CANCELED:
        line, code = f"task {handle.id} canceled", 0
    elif mine is TaskStatus.RUNNING:
        worker = handle.row.worker_id
        line, code = f"task {handle.id}: stop requested (running on worker {worker})", 0
    else:  # the exit code speaks for the task itself, as `handle.cancel()` returns
        line = f"task {handle.id} is already {handle.status}"
        line += "" if changed else ", nothing changed"
        code = EXIT_NOTHING_CHANGED
    if changed:
        stopped = sum(1 for s in changed.values() if s is TaskStatus.RUNNING)
        line += (
            f"; {len(changed) - stopped} unfinished task(s) sent from it canceled, "
            f"{stopped} stop(s) requested"
        )
    print(line)
    return code


def _retry(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_handle(args.task_id)
        queued = handle.retry()  # KeyInUse: exit 2 through main
    finally:
        hy.close()
    if queued:
        print(f"task {handle.id} queued again")
        return 0
    print(f"task {handle.id} is {handle.status}, not failed or canceled: nothing changed")
    return EXIT_NOTHING_CHANGED


def _prune(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        deleted = hy.store.prune(args.older_than, args.status)
    finally:
        hy.close()
    statuses = ", ".join(args.status)
    age = format_duration(args.older_than)
    print(f"deleted {deleted} task(s) ({statuses}) finished more than {age} ago")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cancel": _cancel,
    "retry": _retry,
    "prune": _prune,
}
