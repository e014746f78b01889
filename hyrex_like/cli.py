"""The ``hyrex-like`` command: run-worker, run-scheduler, init-db/migrate, schedules, and
cancel, retry and prune."""

from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import annotated_types
import pydantic

from .config import MAX_PROCESSES, Settings, WorkerOptions, redact_dsn
from .durations import FORMS, format_duration, parse_duration
from .errors import HyrexLikeError, InvalidTaskOption
from .logs import LEVELS, configure_logging
from .outages import URL_HINT, refusal
from .registry import check_name
from .states import TASK_FINAL, TaskStatus

EXIT_USAGE = 2
EXIT_NOTHING_CHANGED = 1
"""cancel/retry: the task exists but is in no status the command changes."""
_FINAL_ORDER = tuple(s for s in TaskStatus if s in TASK_FINAL)  # completed, failed, canceled

# The worker's numeric options: flag -> field of WorkerOptions. Each flag parses with the
# field's own bounds, so the CLI refuses exactly what the model does, in one line.
_NUMERIC_FLAGS = {
    "--processes": "processes",
    "--prefetch": "prefetch",
    "--busy-after": "busy_after",
    "--grace-period": "grace_period",
    "--stale-after": "stale_after",
    "--heartbeat-interval": "heartbeat_interval",
    "--poll-interval": "poll_interval",
    "--startup-timeout": "startup_timeout",
}


def _bounded(name: str) -> Callable[[str], Any]:
    """A parser for the flag behind ``WorkerOptions.<name>``: its type and its bounds."""
    field = WorkerOptions.model_fields[name]
    whole = field.annotation in (int, int | None)
    low: float | None = None
    low_strict = False
    high: float | None = None
    high_strict = False
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = float(bound.ge)  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Gt):
            low, low_strict = float(bound.gt), True  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Le):
            high = float(bound.le)  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Lt):
            high, high_strict = float(bound.lt), True  # type: ignore[arg-type]
    unit = "" if whole else " seconds"

    def parse(text: str) -> Any:
        value: float
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            expected = "a whole number" if whole else "seconds"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text}")
        if low is not None and (value < low or (low_strict and value == low)):
            word = "more than" if low_strict else "at least"
            raise argparse.ArgumentTypeError(f"must be {word} {low:g}{unit}, got {text}")
        if high is not None and (value > high or (high_strict and value == high)):
            word = "less than" if high_strict else "at most"
            raise argparse.ArgumentTypeError(f"must be {word} {high:g}{unit}, got {text}")
        return value

    return parse


def _default(name: str) -> Any:
    """The default of ``WorkerOptions.<name>``: written there once, shown by ``--help``."""
    return WorkerOptions.model_fields[name].get_default(call_default_factory=True)


def _queue_name(text: str) -> str:
    """A queue name as ``@hy.task(queue=...)`` accepts it (the same check, not a copy)."""
    try:
        return check_name("queue", text)
    except InvalidTaskOption as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    """A duration flag: ``7d``, ``12h``, ``30m``, ``90s`` or seconds (`parse_duration`)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return seconds


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task id: expected a UUID such as "
            "0b7e4f2c-1a5d-4c3e-9f00-5d2e8c6a1b34"
        ) from None


def _final_statuses(text: str) -> tuple[TaskStatus, ...]:
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


def _version() -> str:
    try:
        return metadata.version("hyrex-like")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        from . import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyrex-like", description="Typed, durable background tasks on PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url",
            help="PostgreSQL URL (default: $HYREX_LIKE_DATABASE_URL, else the embedded database)",
        )
        p.add_argument(
            "--schema",
            help="PostgreSQL schema for the tables (default: $HYREX_LIKE_SCHEMA, else hyrex_like)",
        )
        p.add_argument(
            "--log-level",
            choices=LEVELS,
            default=_default("log_level"),
            help="default: %(default)s",
        )
        p.add_argument(
            "--log-format",
            choices=("console", "json"),
            default=_default("log_format"),
            help="console (readable) or json (one object per line); default: %(default)s",
        )

    w = sub.add_parser(
        "run-worker",
        help="run a worker for the tasks of an app",
        description="Claim and run tasks until SIGTERM/SIGINT.",
    )
    w.add_argument(
        "app",
        help="import path of the registry: 'module:attribute', or 'module' "
        "when it holds exactly one HyrexRegistry",
    )
    w.add_argument(
        "--queue",
        "-q",
        action="append",
        default=[],
        dest="queues",
        type=_queue_name,
        help="serve this queue (repeatable; default: every queue)",
    )
    w.add_argument(
        "--processes",
        "-p",
        type=_bounded("processes"),
        default=_default("processes"),
        help="executor processes running task code (default: the CPU count, at most "
        f"{MAX_PROCESSES}: %(default)s)",
    )
    w.add_argument(
        "--prefetch",
        type=_bounded("prefetch"),
        default=_default("prefetch"),
        help="tasks handed to an executor at once (fewer for longer tasks), and a cap of "
        "processes x prefetch on what the worker holds (default: auto: 16 per executor, and "
        "while the queue is deep the worker claims ahead what starts within 0.2 s)",
    )
    w.add_argument(
        "--busy-after",
        type=_bounded("busy_after"),
        default=_default("busy_after"),
        help="seconds a task may run before its executor counts as busy with a long task: "
        "the tasks queued behind it are taken back to run elsewhere and it takes no new ones; "
        "claimed tasks no executor can start for 5x this long go back to the queue for another "
        "worker (default: %(default)s)",
    )
    w.add_argument(
        "--grace-period",
        type=_bounded("grace_period"),
        default=_default("grace_period"),
        help="seconds running tasks get to finish after SIGTERM before they are "
        "requeued (default: %(default)s); a second signal stops at once",
    )
    w.add_argument(
        "--stale-after",
        type=_bounded("stale_after"),
        default=_default("stale_after"),
        help="seconds without heartbeat after which another worker's running tasks "
        "are requeued (default: %(default)s)",
    )
    w.add_argument(
        "--heartbeat-interval",
        type=_bounded("heartbeat_interval"),
        default=_default("heartbeat_interval"),
        help="seconds between heartbeats (default: %(default)s)",
    )
    w.add_argument(
        "--poll-interval",
        type=_bounded("poll_interval"),
        default=_default("poll_interval"),
        help="seconds between polls when no notification arrives (default: %(default)s)",
    )
    w.add_argument(
        "--startup-timeout",
        type=_bounded("startup_timeout"),
        default=_default("startup_timeout"),
        help="seconds to keep trying to reach the database at start, and to keep retrying "
        "once running when the database refuses the worker (a role that may not log in, a "
        "database that does not exist...) before it stops with exit code 2; at start a refusal "
        "stops it at once (default: %(default)s)",
    )
    w.add_argument(
        "--retention",
        type=_positive_duration,
        default=_default("retention"),
        metavar="DURATION",
        help="delete finished tasks (completed, failed, canceled) and their runs once they "
        "finished longer ago than this (7d, 12h, 30m, 90s or seconds), a few at a time between "
        "heartbeats; tasks whose parent or child is still queued or running stay "
        "(default: off, finished tasks are kept)",
    )
    w.add_argument(
        "--no-scheduler",
        action="store_false",
        dest="scheduler",
        help="do not fire the app's schedules in this worker (leave them to other workers or "
        "to run-scheduler); by default every worker fires them, each tick making one task "
        "however many do",
    )
    common(w)

    app_help = (
        "import path of the registry: 'module:attribute', or 'module' "
        "when it holds exactly one HyrexRegistry"
    )
    s = sub.add_parser(
        "run-scheduler",
        help="fire an app's schedules, without running tasks",
        description="Turn the ticks of the app's scheduled tasks into tasks until "
        "SIGTERM/SIGINT (exit code 0), for deployments that run workers with --no-scheduler. "
        "Any number of schedulers and workers may fire the same schedules: each tick makes "
        "one task. Exit code 2 when the app has no scheduled task.",
    )
    s.add_argument("app", help=app_help)
    common(s)

    ls = sub.add_parser(
        "schedules",
        help="list an app's schedules with their next tick and last task",
        description="List the app's scheduled tasks: the schedule, its next tick, the last "
        "tick fired and that tick's task with its status.",
    )
    ls.add_argument("app", help=app_help)
    ls.add_argument("--json", action="store_true", help="one JSON array of objects")
    common(ls)

    for name, text in (
        ("init-db", "create the schema (or upgrade it)"),
        ("migrate", "apply pending migrations (same as init-db)"),
    ):
        m = sub.add_parser(name, help=text, description=text)
        common(m)

    c = sub.add_parser(
        "cancel",
        help="cancel a task by id",
        description="Cancel a task: a queued one (delayed, or waiting for a retry) is canceled "
        "and never runs; a running one is stopped by its worker within about a second and ends "
        "canceled, never retried. Exit code 0 when canceled or its stop requested, 1 when it "
        "had already finished (nothing changes), 2 for an unknown or malformed id.",
    )
    c.add_argument("task_id", metavar="ID", type=_task_id, help="the task's id (a UUID)")
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
    r.add_argument("task_id", metavar="ID", type=_task_id, help="the task's id (a UUID)")
    common(r)

    p = sub.add_parser(
        "prune",
        help="delete old finished tasks and their runs",
        description="Delete the tasks that finished (completed, failed or canceled) longer ago "
        "than --older-than, with their runs, in small batches (each its own short transaction, "
        "rows locked by others skipped), so that workers carry on meanwhile. Tasks whose "
        "parent or child is still queued or running stay.",
    )
    p.add_argument(
        "--older-than",
        required=True,
        type=_duration,
        metavar="DURATION",
        help=f"how long ago the tasks finished: {FORMS} (a bare number is seconds; 0s: every "
        "finished task)",
    )
    p.add_argument(
        "--status",
        type=_final_statuses,
        default=_FINAL_ORDER,
        metavar="STATUSES",
        help="comma-separated final statuses to prune (default: " + ",".join(_FINAL_ORDER) + ")",
    )
    common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
        if args.command == "run-worker":
            return _run_worker(args)
        if args.command == "run-scheduler":
            return _run_scheduler(args)
        if args.command == "schedules":
            return _schedules(args)
        if args.command in _ADMIN:
            return _ADMIN[args.command](args)
        return _migrate(args)
    except HyrexLikeError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the driver's text held
        if "DATABASE_URL" not in message and refusal(exc) is not None:
            message = f"{message}; {URL_HINT}"
        print(f"hyrex-like: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _migrate(args: argparse.Namespace) -> int:
    from .db import Store

    settings = Settings.from_env(database_url=args.database_url, schema_name=args.schema)
    store = Store(settings)
    applied = store.migrate()
    where = f"{redact_dsn(store.url())} schema {settings.schema_name}"
    if applied:
        print(f"applied migrations {applied} to {where}")
    else:
        print(f"schema is up to date ({where})")
    return 0


def _registry(args: argparse.Namespace) -> Any:
    """A registry with no tasks, on the database and schema of the flags: the admin commands
    work on any task by id, without importing the app."""
    from .registry import HyrexRegistry

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


_ADMIN: dict[str, Callable[[argparse.Namespace], int]] = {
    "cancel": _cancel,
    "retry": _retry,
    "prune": _prune,
}


def _run_worker(args: argparse.Namespace) -> int:
    """The flags as `WorkerOptions` (refused in flag terms before the app is imported), then
    the `Worker` that ``hy.worker(...)`` makes from code (`main` configured logging)."""
    from .runner import Worker
    from .worker.app import load_registry

    try:
        options = WorkerOptions(
            queues=tuple(args.queues),
            processes=args.processes,
            prefetch=args.prefetch,
            busy_after=args.busy_after,
            grace_period=args.grace_period,
            stale_after=args.stale_after,
            heartbeat_interval=args.heartbeat_interval,
            poll_interval=args.poll_interval,
            startup_timeout=args.startup_timeout,
            retention=args.retention,
            scheduler=args.scheduler,
            log_level=args.log_level,
            log_format=args.log_format,
        )
    except pydantic.ValidationError as exc:  # what the flags' own checks cannot see alone
        print(f"hyrex-like run-worker: error: {_first_problem(exc)}", file=sys.stderr)
        return EXIT_USAGE
    sys.path.insert(0, os.getcwd())  # like `python -m`: apps in the working directory import
    registry = load_registry(args.app)
    registry.configure(database_url=args.database_url, schema_name=args.schema)
    return Worker(registry, options, app=args.app).run()


def _app(args: argparse.Namespace) -> Any:
    """The app's registry on the database and schema of the flags."""
    from .worker.app import load_registry

    sys.path.insert(0, os.getcwd())  # like `python -m`: apps in the working directory import
    registry = load_registry(args.app)
    registry.configure(database_url=args.database_url, schema_name=args.schema)
    return registry


def _run_scheduler(args: argparse.Namespace) -> int:
    """Only the scheduler, on this thread's watch until SIGTERM/SIGINT."""
    import signal
    import threading

    from .logs import get_logger
    from .worker.scheduler import Scheduler

    registry = _app(args)
    scheduled = registry.scheduled()
    if not scheduled:
        print(
            f"hyrex-like run-scheduler: error: {args.app!r} has no scheduled tasks (give a task "
            "a schedule: @hy.task(schedule=every(...)) or cron(...)); nothing to fire",
            file=sys.stderr,
        )
        return EXIT_USAGE
    store = registry.store
    store.ensure_schema()  # migrate (or refuse) once, before the thread starts
    log = get_logger("hyrex_like.scheduler")
    scheduler = Scheduler(lambda: store.connect(worker=True), scheduled, log)
    stop = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        scheduler.start()
        log.info(
            "scheduler_started",
            app=args.app,
            schedules=sorted(scheduled),
            database=redact_dsn(store.url()),
            schema=store.schema,
        )
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        registry.close()
    log.info("scheduler_stopped")
    return 0


def _schedules(args: argparse.Namespace) -> int:
    registry = _app(args)
    try:
        infos = registry.schedules()
    finally:
        registry.close()
    if args.json:
        import json

        print(json.dumps([_info_json(i) for i in infos], indent=2))
        return 0
    if not infos:
        print(f"{args.app!r} has no scheduled tasks")
        return 0
    header = ("TASK", "SCHEDULE", "NEXT TICK", "LAST TICK", "LAST TASK", "STATUS")
    rows = [header] + [
        (
            i.task_name,
            i.schedule,
            _when(i.next_tick),
            _when(i.last_tick),
            str(i.last_task_id) if i.last_task_id else "-",
            str(i.last_task_status) if i.last_task_status else "-",
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _when(t: Any) -> str:
    return "-" if t is None else t.isoformat(sep=" ", timespec="seconds")


def _info_json(info: Any) -> dict[str, Any]:
    return {
        "task_name": info.task_name,
        "schedule": info.schedule,
        "catch_up": info.catch_up,
        "next_tick": info.next_tick.isoformat(),
        "last_tick": info.last_tick.isoformat() if info.last_tick else None,
        "last_task_id": str(info.last_task_id) if info.last_task_id else None,
        "last_task_status": str(info.last_task_status) if info.last_task_status else None,
    }


def _first_problem(exc: pydantic.ValidationError) -> str:
    """One line for the first error of ``WorkerOptions``, in terms of the flags."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    for flag, name in _NUMERIC_FLAGS.items():
        message = message.replace(name, flag)
    loc = ".".join(str(part) for part in error["loc"])
    flag = {v: k for k, v in _NUMERIC_FLAGS.items()}.get(loc, f"--{loc.replace('_', '-')}")
    return f"argument {flag}: {message}" if loc else message


if __name__ == "__main__":
    sys.exit(main())
