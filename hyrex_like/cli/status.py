"""``hyrex-like status [--window MINUTES] [--watch [SECS]] [--json]``: per queue the tasks ready,
waiting and running, the age of the oldest ready one, the attempts that ended in the last
minutes and how fast, then the workers alive (``hy.stats()``); once, or every few seconds until
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import HyrexLikeError
from .common import age, registry, table_lines, utc_time

if TYPE_CHECKING:
    from ..inspect import Stats
    from ..registry import HyrexRegistry

CLEAR = "\x1b[H\x1b[2J"
"""ANSI: cursor home, erase the screen (written only when stdout is a terminal)."""
MIN_INTERVAL = 0.1
MAX_WINDOW = 24 * 60
"""The longest --window: the tallies (queue_minute) are kept for a day."""


def _minutes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WINDOW:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of minutes from 1 to {MAX_WINDOW} (a day), got {text!r}"
        )
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= MIN_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"expected seconds between refreshes, at least {MIN_INTERVAL:g}, got {text!r}"
        )
    return value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The status subcommand."""
    s = sub.add_parser(
        "status",
        help="per queue: ready, waiting, running, oldest, ended lately and the rate; workers",
        description="Per queue: tasks ready to run now, waiting for their time and running; "
        "the age of the oldest ready task; the attempts that completed and failed (failed, "
        "timed out or lost) in the last --window minutes and how many ended per minute; the "
        "concurrency limit and pause. Then how many workers are alive. With --watch, again "
        "every SECS seconds until SIGINT or SIGTERM (exit code 0).",
    )
    s.add_argument(
        "--window",
        type=_minutes,
        default=5,
        metavar="MINUTES",
        help="count the attempts that ended in the last MINUTES, at most 1440 "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_interval,
        metavar="SECS",
        help="print again every SECS seconds (default 2), clearing a terminal first",
    )
    s.add_argument(
        "--json",
        action="store_true",
        help="one JSON object (with --watch: one line per refresh)",
    )
    common(s)


def render(stats: Stats) -> list[str]:
    """The human view of ``stats``: a line saying when, the queue table, the workers alive."""
    lines = [f"at {utc_time(stats.at)}; ended in the last {stats.window_minutes} min"]
    header = (
        "QUEUE",
        "READY",
        "WAITING",
        "RUNNING",
        "OLDEST",
        "DONE",
        "FAILED",
        "PER/MIN",
        "LIMIT",
        "PAUSED",
    )
    rows = [
        (
            q.queue,
            str(q.ready),
            str(q.waiting),
            str(q.running),
            age(q.oldest_ready_seconds),
            str(q.completed),
            str(q.failed),
            f"{q.per_minute:.1f}",
            "-" if q.concurrency_limit is None else str(q.concurrency_limit),
            "yes" if q.paused else "no",
        )
        for q in stats.queues
    ]
    if rows:
        lines += table_lines(header, rows)
    else:
        lines.append("no queue has tasks queued or running, or a setting")
    lines.append(f"workers alive: {stats.workers_alive}")
    return lines


def _emit(stats: Stats, as_json: bool, clear: bool) -> None:
    text = json.dumps(stats.to_json()) if as_json else "\n".join(render(stats))
    sys.stdout.write((CLEAR if clear else "") + text + "\n")
    sys.stdout.flush()


def _watch(hy: HyrexRegistry, args: argparse.Namespace) -> None:
    """Print every ``args.watch`` seconds until SIGINT or SIGTERM. Only the first read's error
    ends it (a wrong schema, a bad window); later ones (an outage) are reported and retried."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    clear = not args.json and sys.stdout.isatty()
    first = True
    try:
        while not stop.is_set():
            try:
                stats = hy.stats(window_minutes=args.window)
            except HyrexLikeError as exc:
                if first:
                    raise
                message = " ".join(str(exc).split())
                print(
                    f"hyrex-like status: error: {message}; trying again in {args.watch:g}s",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                _emit(stats, args.json, clear)
            first = False
            stop.wait(args.watch)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _status(args: argparse.Namespace) -> int:
    hy = registry(args)
    try:
        if args.watch is None:
            _emit(hy.stats(window_minutes=args.window), args.json, clear=False)
        else:
            _watch(hy, args)
    except BrokenPipeError:  # `| head`: the reader left, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not fail again
    finally:
        hy.close()
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"status": _status}
