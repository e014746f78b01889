"""``hyrex-like workers``, ``hyrex-like tasks list`` and ``hyrex-like tasks show ID``: what the
queue is doing, read from the database without importing the app (human tables by default,
``--json`` for scripts). ``hyrex-like status`` is in `status`, registered from here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..durations import parse_duration
from ..errors import TaskNotFound
from ..states import TaskStatus
from . import status
from .common import age, ago, jsonable, print_table, registry, task_id, utc_time

STATUSES = ", ".join(s.value for s in TaskStatus)


def _task_status(text: str) -> TaskStatus:
    try:
        return TaskStatus(text.strip().lower())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task status: expected one of {STATUSES}"
        ) from None


def _since(text: str) -> timedelta | datetime:
    """A duration back from now (``1h``, ``30m``) or an ISO time (local unless it has an
    offset)."""
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (such as 30m, 1h or 7d) nor an ISO time (such as "
            "2026-11-30T12:00 or 2026-11-30T12:00+01:00)"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The workers, tasks and status subcommands."""
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
    ls = actions.add_parser(
        "list",
        help="tasks newest first, filtered by name, status, queue and age",
        description="List tasks newest first, a page at a time. When more match, the command "
        "for the next (older) page's cursor is printed on stderr ('more: --after CURSOR'). A "
        "sparse filter over many tasks may end a page early: stderr then says how far back it "
        "scanned, and --after goes on from there.",
    )
    ls.add_argument("--name", metavar="NAME", help="only tasks of this name")
    ls.add_argument(
        "--status",
        type=_task_status,
        metavar="STATUS",
        help=f"only tasks in this status: {STATUSES}",
    )
    ls.add_argument("--queue", metavar="QUEUE", help="only tasks of this queue")
    ls.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only tasks created since WHEN: a duration back from now (30m, 1h, 7d) or an ISO "
        "time (2026-11-30T12:00, local time unless it has an offset)",
    )
    ls.add_argument(
        "--limit", type=_limit, default=50, metavar="N", help="tasks per page (default: 50)"
    )
    ls.add_argument(
        "--after",
        metavar="CURSOR",
        help="the next page: the cursor that the previous page printed on stderr",
    )
    ls.add_argument(
        "--json",
        action="store_true",
        help="one JSON array of objects on stdout; the next page's cursor (and how far a short "
        "page scanned) stay on stderr, as 'more: --after CURSOR' ('scanned to ...')",
    )
    common(ls)
    show = actions.add_parser(
        "show",
        help="one task with every run, its error and traceback",
        description="Show one task: its row (name, queue, status, payload, result, last "
        "error), every run (attempt) with its status, worker, times, error and traceback, then "
        "its parent and children. Exit code 2 for an unknown or malformed id.",
    )
    show.add_argument("task_id", metavar="ID", type=task_id, help="the task's id (a UUID)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    common(show)
    status.add_parsers(sub, common)


def _workers(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        infos = hy.list_workers(recent=args.recent)
    finally:
        hy.close()
    if args.json:
        print(json.dumps([jsonable(dataclasses.asdict(i)) for i in infos]))
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
            ago(i.heartbeat_at, now),
        )
        for i in infos
    ]
    print_table(header, rows)
    return 0


def _list(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        page = hy.list_tasks(
            name=args.name,
            status=args.status,
            queue=args.queue,
            since=args.since,
            limit=args.limit,
            after=args.after,
        )
    finally:
        hy.close()
    if args.json:
        print(json.dumps([t.to_json() for t in page.items]))
    elif page.items:
        header = ("ID", "NAME", "QUEUE", "STATUS", "ATTEMPTS", "CREATED")
        rows = [
            (
                str(t.id),
                t.task_name,
                t.queue,
                str(t.status),
                str(t.attempts),
                utc_time(t.created_at),
            )
            for t in page.items
        ]
        print_table(header, rows)
    else:
        print("no task matches" + (" on this page" if page.next else ""))
    sys.stdout.flush()  # the table before the hints, when both go to one terminal
    if page.scanned_to is not None:
        scanned = page.scanned_to
        print(
            f"scanned to {utc_time(scanned)} ({age((datetime.now(UTC) - scanned).total_seconds())}"
            " ago): the page ended early; older tasks were not looked at yet",
            file=sys.stderr,
        )
    if page.next is not None:
        print(f"more: --after {page.next}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        detail = hy.task_detail(args.task_id)  # one read: the row, runs, parent, children
    finally:
        hy.close()
    if detail is None:  # exit 2 through main, as for any missing task
        raise TaskNotFound(f"task {args.task_id} does not exist in this database/schema")
    row, runs, parent, children = detail.row, detail.runs, detail.parent, detail.children
    fields = dataclasses.asdict(row)
    if args.json:
        fields["runs"] = [run.model_dump() for run in runs]
        fields["parent"] = None if parent is None else parent.to_json()
        fields["children"] = [c.to_json() for c in children]
        print(json.dumps(jsonable(fields)))
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
        print(f"{key + ':':15} {jsonable(fields[key])}")
    print(f"{'args:':15} {json.dumps(jsonable(row.args))}")
    print(f"{'result:':15} {json.dumps(jsonable(row.result))}")
    if row.last_error:
        print(f"{'last_error:':15} {json.dumps(jsonable(row.last_error))}")
    print(f"runs: {len(runs)}")
    for run in runs:
        print(
            f"  attempt {run.attempt_number}: {run.status} on worker {run.worker_id}, "
            f"claimed {jsonable(run.claimed_at)}, started {jsonable(run.started_at)}, "
            f"finished {jsonable(run.finished_at)}"
        )
        if run.error_type is not None:
            print(f"    error: {run.error_type}: {run.error_message}")
        if run.traceback:
            for line in run.traceback.rstrip().splitlines():
                print(f"    | {line}")
    if parent is not None:
        print(f"parent: {parent.id} {parent.task_name} {parent.status}")
    if children:
        print(f"children: {len(children)}" + (" (the first 200)" if len(children) >= 200 else ""))
        for child in children:
            print(f"  {child.id} {child.task_name} {child.status}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    return _list(args) if args.tasks_command == "list" else _show(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "workers": _workers,
    "tasks": _tasks,
    **status.COMMANDS,
}
