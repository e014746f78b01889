"""``hyrex-like run-scheduler`` (only the scheduler: the split deployment) and ``hyrex-like
schedules`` (each schedule with its next tick and last task)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..config import redact_dsn
from .common import APP_HELP, EXIT_USAGE, load_app, print_table


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The run-scheduler and schedules subcommands."""
    s = sub.add_parser(
        "run-scheduler",
        help="fire an app's schedules, without running tasks",
        description="Turn the ticks of the app's scheduled tasks into tasks until "
        "SIGTERM/SIGINT (exit code 0), for deployments that run workers with --no-scheduler. "
        "Any number of schedulers and workers may fire the same schedules: each tick makes "
        "one task. Exit code 2 when the app has no scheduled task.",
    )
    s.add_argument("app", help=APP_HELP)
    common(s)

    ls = sub.add_parser(
        "schedules",
        help="list an app's schedules with their next tick and last task",
        description="List the app's scheduled tasks: the schedule, its next tick, the last "
        "tick fired and that tick's task with its status.",
    )
    ls.add_argument("app", help=APP_HELP)
    ls.add_argument("--json", action="store_true", help="one JSON array of objects")
    common(ls)


def _run_scheduler(args: argparse.Namespace) -> int:
    """Only the scheduler, on this thread's watch until SIGTERM/SIGINT."""
    import signal
    import threading

    from ..logs import get_logger
    from ..worker.scheduler import Scheduler

    registry = load_app(args)
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
    registry = load_app(args)
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
    rows = [
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
    print_table(header, rows)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run-scheduler": _run_scheduler,
    "schedules": _schedules,
}
