"""The ``hyrex-like`` command: run-worker, init-db/migrate."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

from .config import Settings, redact_dsn
from .errors import HyrexLikeError
from .logs import LEVELS, configure_logging

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            bound = f"more than {minimum:g}" if strict else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound} seconds, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyrex-like", description="Typed, durable background tasks on PostgreSQL."
    )
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
        p.add_argument("--log-level", choices=LEVELS, default="info", help="default: info")
        p.add_argument(
            "--log-format",
            choices=("console", "json"),
            default="console",
            help="console (readable) or json (one object per line); default: console",
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
        help="serve this queue (repeatable; default: every queue)",
    )
    w.add_argument(
        "--processes",
        "-p",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="executor processes running task code (default: CPU count, %(default)s)",
    )
    w.add_argument(
        "--prefetch",
        type=_positive_int,
        default=16,
        help="tasks an executor holds at most: a batch when idle, topped up when half done; "
        "lower it for long tasks, raise it for many tiny ones (default: %(default)s)",
    )
    w.add_argument(
        "--grace-period",
        type=_seconds(0, strict=False),
        default=30.0,
        help="seconds running tasks get to finish after SIGTERM before they are "
        "requeued (default: %(default)s); a second signal stops at once",
    )
    w.add_argument(
        "--stale-after",
        type=_seconds(0, strict=True),
        default=30.0,
        help="seconds without heartbeat after which another worker's running tasks "
        "are requeued (default: %(default)s)",
    )
    w.add_argument(
        "--heartbeat-interval",
        type=_seconds(0, strict=True),
        default=2.0,
        help="seconds between heartbeats (default: %(default)s)",
    )
    w.add_argument(
        "--poll-interval",
        type=_seconds(0, strict=True),
        default=1.0,
        help="seconds between polls when no notification arrives (default: %(default)s)",
    )
    w.add_argument(
        "--startup-timeout",
        type=_seconds(0, strict=False),
        default=15.0,
        help="seconds to keep trying to reach the database at start (default: %(default)s)",
    )
    common(w)

    for name, text in (
        ("init-db", "create the schema (or upgrade it)"),
        ("migrate", "apply pending migrations (same as init-db)"),
    ):
        m = sub.add_parser(name, help=text, description=text)
        common(m)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
        if args.command == "run-worker":
            return _run_worker(args)
        return _migrate(args)
    except HyrexLikeError as exc:
        print(f"hyrex-like: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _migrate(args: argparse.Namespace) -> int:
    from .store import Store

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
    from .dispatcher import Dispatcher, WorkerOptions
    from .executor import load_registry

    sys.path.insert(0, os.getcwd())  # like `python -m`: apps in the working directory import
    registry = load_registry(args.app)
    registry.configure(database_url=args.database_url, schema_name=args.schema)
    options = WorkerOptions(
        queues=tuple(args.queues),
        processes=args.processes,
        prefetch=args.prefetch,
        grace_period=args.grace_period,
        stale_after=args.stale_after,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=args.poll_interval,
        startup_timeout=args.startup_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
    )
    return Dispatcher(registry, args.app, options).run()


if __name__ == "__main__":
    sys.exit(main())
