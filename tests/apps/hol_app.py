"""The app of tests/test_head_of_line.py: a task that notes when its body starts and ends (in
``$HYREX_TEST_OUT/events.jsonl``, with its pid), and `main`, a worker started from code with
options the command line has no flag for (``python -c "import hol_app; hol_app.main()" JSON``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


def note(kind: str, **data: Any) -> None:
    """One JSON line per event, as worker_app's ``note`` writes them (O_APPEND: whole lines)."""
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    path = os.path.join(os.environ["HYREX_TEST_OUT"], "events.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Work(BaseModel):
    n: int
    seconds: float = 0.0


@hy.task
def work(job: Work) -> int:
    note("start", n=job.n)
    if job.seconds:
        time.sleep(job.seconds)
    note("end", n=job.n)
    return job.n


def main() -> int:
    """Run a worker with the `WorkerOptions` given as JSON in ``sys.argv[1]``."""
    from hyrex_like.config import WorkerOptions
    from hyrex_like.logs import configure_logging
    from hyrex_like.runner import Worker

    options = WorkerOptions(**json.loads(sys.argv[1]))
    configure_logging(options.log_level, options.log_format)
    return Worker(hy, options, app="hol_app:hy").run()
