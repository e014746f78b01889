"""An app whose on_error handler is slow: `hyrex-like run-worker slow_handler_app:hy`.

Events go, one JSON line each, to ``$HYREX_TEST_OUT/events.jsonl`` (as in worker_app.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()

HANDLER_SECONDS = 5.0


def note(kind: str, **data: Any) -> None:
    out = os.environ.get("HYREX_TEST_OUT")
    if not out:
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    fd = os.open(os.path.join(out, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def slow_handler(exc: Exception) -> None:
    note("handler_start", type=type(exc).__name__)
    time.sleep(HANDLER_SECONDS)
    note("handler_end", type=type(exc).__name__)


@hy.task(timeout_seconds=0.5, max_retries=0, on_error=slow_handler)
def stuck(n: int) -> int:
    time.sleep(60)
    return n


@hy.task
def quick(n: int) -> int:
    note("quick", n=n)
    return n
