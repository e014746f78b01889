"""``hyrex-like workflows list|show|pause|resume|cancel``: workflow runs by id, without
importing the app (``--app`` to use the database its registry names)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..db import workflows as db
from ..errors import WorkflowStateError
from ..registry import HyrexRegistry
from ..states import TaskStatus
from ..workflow_status import WorkflowStatus, summarize
from .common import APP_HELP, EXIT_NOTHING_CHANGED, load_app, print_table

_STATE_HELP = (
    "Exit code 2 for an unknown or malformed id, 1 when the workflow is in no state this "
    "changes (the reason on stderr), 0 otherwise."
)


def workflow_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a workflow id: expected a UUID such as "
            "0b7e4f2c-1a5d-4c3e-9f00-5d2e8c6a1b34"
        ) from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, got {text}")
    return value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``workflows`` command and its list, show, pause, resume and cancel subcommands."""
    w = sub.add_parser(
        "workflows",
        help="list, show, pause, resume or cancel workflow runs",
        description="Workflow runs in the database: their summary status (pending, running, "
        "paused, failed, canceled, completed) and current step, each step's task; pause, "
        "resume or cancel one by id.",
    )
    actions = w.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")

    def leaf(name: str, text: str, description: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=text, description=description)
        p.add_argument(
            "--app",
            help=APP_HELP + "; optional: the database and schema its registry names are used "
            "unless --database-url/--schema are given",
        )
        common(p)
        return p

    ls = leaf(
        "list",
        "workflow runs, newest first",
        "List workflow runs, newest first, with their summary status and current step (the "
        "first step not completed).",
    )
    ls.add_argument("--name", help="only the runs of this workflow")
    ls.add_argument(
        "--limit", type=_limit, default=50, help="at most this many (default: %(default)s)"
    )
    ls.add_argument("--json", action="store_true", help="one JSON array of objects")

    sh = leaf(
        "show",
        "one workflow run and its steps",
        "Show a workflow run: its summary status and current step, then each step with its "
        "task's status, attempts, progress and last error. Exit code 2 for an unknown or "
        "malformed id.",
    )
    sh.add_argument("workflow_id", metavar="ID", type=workflow_id, help="the workflow's id")
    sh.add_argument("--json", action="store_true", help="one JSON object")

    for name, text, description in (
        (
            "pause",
            "pause a running workflow",
            "Pause a pending or running workflow: its running step is stopped by its worker "
            "within about a second (the run recorded as interrupted, not counted against its "
            "retries) and held with the steps not started yet, until resume. " + _STATE_HELP,
        ),
        (
            "resume",
            "resume a paused or failed workflow",
            "Resume a workflow: a paused one restarts its stopped step with the same arguments; "
            "a failed one queues its failed step again with its previous arguments and a fresh "
            "retry budget, and the steps after it follow. " + _STATE_HELP,
        ),
        (
            "cancel",
            "cancel a workflow",
            "Cancel a workflow: its queued and held steps are canceled, its running steps "
            "stopped by their workers; nothing more starts. " + _STATE_HELP,
        ),
    ):
        p = leaf(name, text, description)
        p.add_argument("workflow_id", metavar="ID", type=workflow_id, help="the workflow's id")


def _registry(args: argparse.Namespace) -> HyrexRegistry:
    if args.app:
        return load_app(args)
    return HyrexRegistry(args.database_url, schema=args.schema)


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.isoformat(sep=" ", timespec="seconds")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _list(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        runs = hy.list_workflows(name=args.name, limit=args.limit)
    finally:
        hy.close()
    if args.json:
        out = [
            {
                "id": str(r.id),
                "name": r.name,
                "status": str(r.status),
                "current_step": r.current_step,
                "created_at": _iso(r.created_at),
                "finished_at": _iso(r.finished_at),
            }
            for r in runs
        ]
        print(json.dumps(out, indent=2))
        return 0
    if not runs:
        print("no workflow runs" + (f" of {args.name!r}" if args.name else ""))
        return 0
    print_table(
        ("ID", "NAME", "STATUS", "CURRENT STEP", "STEPS", "CREATED", "FINISHED"),
        [
            (
                str(r.id),
                r.name,
                str(r.status),
                r.current_step or "-",
                str(r.steps),
                _when(r.created_at),
                _when(r.finished_at),
            )
            for r in runs
        ],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        row, tasks = db.get_workflow(hy.store, args.workflow_id)  # WorkflowNotFound: exit 2
    finally:
        hy.close()
    status, deciding = summarize(row.state, db.step_states(len(row.steps), tasks))
    by_step = {t.workflow_step: t for t in tasks}
    steps = []
    for i, s in enumerate(row.steps):
        t = by_step.get(i)
        error = t.last_error if t is not None and t.status is not TaskStatus.COMPLETED else None
        steps.append(
            {
                "index": i,
                "name": s["name"],
                "task_name": s["task_name"],
                "queue": s["queue"],
                "task_id": str(t.id) if t else None,
                "status": str(t.status) if t else None,
                "attempts": t.attempt_count if t else 0,
                "progress": t.progress if t else None,
                "last_error": (
                    {"type": error.get("type"), "message": error.get("message")} if error else None
                ),
            }
        )
    current = None if deciding is None else row.steps[deciding]["name"]
    if args.json:
        print(
            json.dumps(
                {
                    "id": str(row.id),
                    "name": row.name,
                    "status": str(status),
                    "current_step": current,
                    "created_at": _iso(row.created_at),
                    "finished_at": _iso(row.finished_at),
                    "on_failure_task_id": (
                        str(row.on_failure_task_id) if row.on_failure_task_id else None
                    ),
                    "steps": steps,
                },
                indent=2,
            )
        )
        return 0
    print(f"workflow {row.name} ({row.id})")
    print(f"  status       : {status}" + (f" at step {current}" if current else ""))
    print(f"  created      : {_when(row.created_at)}")
    print(f"  finished     : {_when(row.finished_at)}")
    if row.on_failure_task_id:
        print(f"  on_failure   : task {row.on_failure_task_id}")
    print()
    print_table(
        ("#", "STEP", "TASK", "STATUS", "ATTEMPTS", "PROGRESS", "LAST ERROR"),
        [
            (
                str(s["index"]),
                s["name"],
                s["task_name"],
                s["status"] or "not started",
                str(s["attempts"]),
                "-" if s["progress"] is None else _short(json.dumps(s["progress"]), 40),
                "-"
                if s["last_error"] is None
                else _short(f"{s['last_error']['type']}: {s['last_error']['message']}"),
            )
            for s in steps
        ],
    )
    return 0


def _state_error(exc: WorkflowStateError) -> int:
    print(f"hyrex-like: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return EXIT_NOTHING_CHANGED


def _running_steps(handle: Any) -> list[str]:
    return [s.name for s in handle.steps if s.status is TaskStatus.RUNNING]


def _pause(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_workflow(args.workflow_id)  # WorkflowNotFound: exit 2 through main
        try:
            changed = handle.pause()
        except WorkflowStateError as exc:
            return _state_error(exc)
        stopping = _running_steps(handle)
    finally:
        hy.close()
    where = f"workflow {handle.name} ({handle.id})"
    if not changed:
        print(f"{where} is already paused, nothing changed")
        return EXIT_NOTHING_CHANGED
    line = f"{where} paused" + (f" at step {handle.current_step}" if handle.current_step else "")
    if stopping:
        line += f"; stop requested for running step(s): {', '.join(stopping)}"
    print(line)
    return 0


def _resume(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_workflow(args.workflow_id)
        try:
            was = handle.resume()
        except WorkflowStateError as exc:
            return _state_error(exc)
    finally:
        hy.close()
    again = (
        "the stopped step restarts"
        if was is WorkflowStatus.PAUSED
        else "the failed step is queued again"
    )
    line = f"workflow {handle.name} ({handle.id}) resumed (it was {was}): {again}"
    print(
        line
        + (f"; now {handle.status} at step {handle.current_step}" if handle.current_step else "")
    )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    hy = _registry(args)
    try:
        handle = hy.get_workflow(args.workflow_id)
        try:
            changed = handle.cancel()
        except WorkflowStateError as exc:
            return _state_error(exc)
        stopping = _running_steps(handle)
    finally:
        hy.close()
    where = f"workflow {handle.name} ({handle.id})"
    if not changed:
        print(f"{where} is already {handle.status}, nothing changed")
        return EXIT_NOTHING_CHANGED
    line = f"{where} canceled"
    if stopping:
        line += f"; stop requested for running step(s): {', '.join(stopping)}"
    print(line)
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _list,
    "show": _show,
    "pause": _pause,
    "resume": _resume,
    "cancel": _cancel,
}


def _workflows(args: argparse.Namespace) -> int:
    return _ACTIONS[args.workflows_command](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"workflows": _workflows}
