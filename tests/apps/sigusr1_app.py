"""An app whose import installs its own SIGUSR1 handler, as some libraries do."""

from __future__ import annotations

import signal

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()
signal.signal(signal.SIGUSR1, lambda signum, frame: None)


@hy.task
def echo(n: int) -> int:
    return n
