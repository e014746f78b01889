"""``hyrex-like metrics``: the cluster's Prometheus gauges (queue depth and age, live workers),
served once for the whole cluster rather than by every worker. No app is imported; needs the
``hyrex-like[metrics]`` extra."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..registry import HyrexRegistry

DEFAULT_PORT = 9464


def port(text: str) -> int:
    """A TCP port flag: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0 to 65535), got {text!r}")
    return value


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The metrics subcommand."""
    m = sub.add_parser(
        "metrics",
        help="serve the cluster's Prometheus metrics (queue depth and age, live workers)",
        description="Serve /metrics for the whole cluster: tasks per queue that are ready, "
        "waiting for their time or running, the age of each queue's oldest ready task, and "
        "the live workers, read from the database at most every --cache-seconds. Run one per "
        "cluster; each worker serves its own metrics with run-worker --metrics-port. Needs "
        "pip install 'hyrex-like[metrics]'. Runs until SIGTERM/SIGINT.",
    )
    m.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    m.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    m.add_argument(
        "--cache-seconds",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="read the database at most this often, however often scraped (default: %(default)s)",
    )
    common(m)


def _metrics(args: argparse.Namespace) -> int:
    from ..metrics import cluster_registry, serve

    hy = HyrexRegistry(args.database_url, schema=args.schema)
    registry = cluster_registry(hy, args.cache_seconds)
    try:
        server = serve(args.port, args.host, registry)
    except OSError as exc:
        print(
            f"hyrex-like metrics: error: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    print(f"serving the cluster's metrics on {server.url}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.close()
        hy.close()
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"metrics": _metrics}
