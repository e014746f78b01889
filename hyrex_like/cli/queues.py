"""``hyrex-like queue pause|resume|limit`` and ``hyrex-like queues``: queue settings, stored in
the database (every worker obeys them), and the queues with their counts. No app is imported."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from ..queues import MAX_CONCURRENCY_LIMIT, QueueInfo
from .common import EXIT_NOTHING_CHANGED, age, print_table, registry


def _limit(text: str) -> int | None:
    """``none`` (no limit) or a positive int."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a concurrency limit: give 1 to {MAX_CONCURRENCY_LIMIT}, or "
            "'none' to remove the limit"
        )
    return value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The queue and queues subcommands."""
    q = sub.add_parser(
        "queue",
        help="pause, resume or limit a queue",
        description="Change a queue's settings, stored in the database so every worker obeys "
        "them from its next claim.",
    )
    actions = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    pause = actions.add_parser(
        "pause",
        help="stop workers from starting its tasks",
        description="Pause a queue: no worker claims its tasks from now on, and what a worker "
        "claimed and had not started goes back; running tasks finish. Exit code 0.",
    )
    resume = actions.add_parser(
        "resume",
        help="let workers claim it again",
        description="Resume a paused queue. Exit code 0 when it was paused, 1 when it was not "
        "(nothing changes).",
    )
    limit = actions.add_parser(
        "limit",
        help="set how many of its tasks run at once, across all workers",
        description="Set a queue's concurrency limit: never more than N of its tasks run at "
        "once across every worker. 'none' removes the limit. Exit code 0.",
    )
    for action in (pause, resume, limit):
        action.add_argument("name", metavar="NAME", help="the queue's name")
    limit.add_argument("limit", metavar="N", type=_limit, help="a positive number, or 'none'")
    for action in (pause, resume, limit):
        common(action)

    ls = sub.add_parser(
        "queues",
        help="list queues with their limit, pause, queued, ready and running counts",
        description="List every queue that has a setting or tasks queued or running: its "
        "concurrency limit, whether it is paused, how many of its tasks are queued (ready "
        "or waiting for their time), how many of those are ready now, how many are running, "
        "and how long the oldest ready one has waited. 'hyrex-like status' says more.",
    )
    ls.add_argument("--json", action="store_true", help="one JSON array of objects")
    common(ls)


def _queue(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        if args.queue_command == "pause":
            hy.pause_queue(args.name)
            print(f"queue {args.name!r} paused: no worker starts its tasks until it is resumed")
        elif args.queue_command == "resume":
            if not hy.resume_queue(args.name):
                print(f"queue {args.name!r} was not paused: nothing changed")
                return EXIT_NOTHING_CHANGED
            print(f"queue {args.name!r} resumed")
        else:
            info = hy.queue(args.name, concurrency_limit=args.limit)
            if info.concurrency_limit is None:
                print(f"queue {args.name!r} has no concurrency limit")
            else:
                print(
                    f"queue {args.name!r}: at most {info.concurrency_limit} of its tasks run at "
                    f"once ({info.running} running now)"
                )
    finally:
        hy.close()
    return 0


def _as_json(info: QueueInfo, ready: tuple[int, float | None]) -> dict[str, Any]:
    """Its fields by name (name, concurrency_limit, paused, paused_at, queued, running), then
    ready and oldest_ready_seconds."""
    out = dataclasses.asdict(info)
    out["paused_at"] = info.paused_at.isoformat() if info.paused_at else None
    out["ready"], out["oldest_ready_seconds"] = ready
    return out


def _queues(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        infos = hy.queues()
        # Ready now, and the oldest ready task's age: from the stats (indexed reads, with a
        # window of one minute for the part this command does not show).
        stats = hy.stats(window_minutes=1) if infos else None
    finally:
        hy.close()
    ready = {q.queue: (q.ready, q.oldest_ready_seconds) for q in stats.queues} if stats else {}
    if args.json:
        print(json.dumps([_as_json(i, ready.get(i.name, (0, None))) for i in infos]))
        return 0
    if not infos:
        print("no queues: no task is queued or running, and no queue is paused or limited")
        return 0
    header = ("QUEUE", "LIMIT", "PAUSED", "QUEUED", "READY", "RUNNING", "OLDEST")
    rows = []
    for i in infos:
        count, oldest = ready.get(i.name, (0, None))
        rows.append(
            (
                i.name,
                "-" if i.concurrency_limit is None else str(i.concurrency_limit),
                "yes" if i.paused else "no",
                str(i.queued),
                str(count),
                str(i.running),
                age(oldest),
            )
        )
    print_table(header, rows)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "queue": _queue,
    "queues": _queues,
}
