"""An app whose on_error handler blocks until the test releases it:
`hyrex-like run-worker slow_handler_app:hy`.

Events go, one JSON line each, to ``$HYREX_TEST_OUT/events.jsonl`` (as in worker_app.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()

RELEASE = "release"
"""The file (in ``$HYREX_TEST_OUT``) the test creates to let the slow handler return."""


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
    """Blocks until the test creates the release file (10 minutes at most)."""
    note("handler_start", type=type(exc).__name__)
    release = os.path.join(os.environ.get("HYREX_TEST_OUT", "."), RELEASE)
    deadline = time.monotonic() + 600
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    note("handler_end", type=type(exc).__name__)


@hy.task(timeout_seconds=0.5, max_retries=0, on_error=slow_handler)
def stuck(n: int) -> int:
    time.sleep(60)
    return n


@hy.task
def quick(n: int) -> int:
    note("quick", n=n)
    return n
