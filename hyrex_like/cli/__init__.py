"""The ``hyrex-like`` command: the parser, ``main``, run-worker and init-db/migrate; the
cancel/retry/prune commands are in `admin`, run-scheduler/schedules in `schedules`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import annotated_types
import pydantic

from ..config import MAX_PROCESSES, Settings, WorkerOptions, redact_dsn
from ..errors import HyrexLikeError, InvalidTaskOption
from ..logs import LEVELS, configure_logging
from ..outages import URL_HINT, refusal
from ..registry import check_name
from . import admin, dashboard, inspect, queues, schedules, workflows
from .common import EXIT_USAGE, load_app, positive_duration

# The worker's numeric options: flag -> field of WorkerOptions. Each flag parses with the
# field's own bounds, so the CLI refuses exactly what the model does, in one line.
_NUMERIC_FLAGS = {
    "--processes": "processes",
    "--prefetch": "prefetch",
    "--busy-after": "busy_after",
    "--async-concurrency": "async_concurrency",
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


def _version() -> str:
    try:
        return metadata.version("hyrex-like")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        from .. import __version__

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
        "--async-concurrency",
        type=_bounded("async_concurrency"),
        default=_default("async_concurrency"),
        help="async def tasks each executor runs at once on its event loop; sync tasks still "
        "run one at a time (default: %(default)s)",
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
        type=positive_duration,
        default=_default("retention"),
        metavar="DURATION",
        help="delete finished tasks (completed, failed, canceled) and their runs once they "
        "finished longer ago than this (7d, 12h, 30m, 90s or seconds), a few at a time between "
        "heartbeats; the tasks of a tree of which one is still queued or running stay "
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

    schedules.add_parsers(sub, common)
    for name, text in (
        ("init-db", "create the schema (or upgrade it)"),
        ("migrate", "apply pending migrations (same as init-db)"),
    ):
        m = sub.add_parser(name, help=text, description=text)
        common(m)
    admin.add_parsers(sub, common)
    workflows.add_parsers(sub, common)
    queues.add_parsers(sub, common)
    inspect.add_parsers(sub, common)
    dashboard.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
        if args.command == "run-worker":
            return _run_worker(args)
        command = (
            admin.COMMANDS.get(args.command)
            or schedules.COMMANDS.get(args.command)
            or workflows.COMMANDS.get(args.command)
            or queues.COMMANDS.get(args.command)
            or inspect.COMMANDS.get(args.command)
            or dashboard.COMMANDS.get(args.command)
        )
        if command is not None:
            return command(args)
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
    from ..db import Store

    settings = Settings.from_env(database_url=args.database_url, schema_name=args.schema)
    store = Store(settings)
    applied = store.migrate()
    where = f"{redact_dsn(store.url())} schema {settings.schema_name}"
    if applied:
        print(f"applied migrations {applied} to {where}")
    else:
        print(f"schema is up to date ({where})")
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    """The flags as `WorkerOptions` (refused in flag terms before the app is imported), then
    the `Worker` that ``hy.worker(...)`` makes from code (`main` configured logging)."""
    from ..runner import Worker

    try:
        options = WorkerOptions(
            queues=tuple(args.queues),
            processes=args.processes,
            prefetch=args.prefetch,
            busy_after=args.busy_after,
            async_concurrency=args.async_concurrency,
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
    return Worker(load_app(args), options, app=args.app).run()


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
