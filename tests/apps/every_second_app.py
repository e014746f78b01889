"""An app with one task scheduled every second, for the exactly-once proof and ctx.scheduled_for:
`hyrex-like run-worker every_second_app:hy`.

Each body appends one JSON line to ``$HYREX_TEST_OUT/ticks.jsonl`` (when set): its task id,
attempt, ``scheduled_for`` (epoch seconds, or None) and when the body started, so a test can
compare what ran with what the database says was scheduled.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from hyrex_like import HyrexRegistry, every, get_hyrex_context

hy = HyrexRegistry()


def record(kind: str) -> dict[str, Any]:
    """Note this attempt (O_APPEND keeps lines from concurrent executors whole) and return it."""
    started = time.time()
    ctx = get_hyrex_context()
    tick = ctx.scheduled_for
    row = {
        "kind": kind,
        "task_id": str(ctx.task_id),
        "attempt": ctx.attempt_number,
        "scheduled_for": None if tick is None else tick.timestamp(),
        "tz": None if tick is None else str(tick.tzinfo),
        "started": started,
        "local": ctx.is_local,
        "pid": os.getpid(),
    }
    out = os.environ.get("HYREX_TEST_OUT")
    if out:
        fd = os.open(os.path.join(out, "ticks.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (json.dumps(row) + "\n").encode())
        finally:
            os.close(fd)
    return row


@hy.task(schedule=every(timedelta(seconds=1)))
def tick() -> dict[str, Any]:
    return record("tick")


@hy.task
def plain() -> dict[str, Any]:
    """Sent by hand: its context has no tick."""
    return record("plain")
