"""The embedded default: a private PostgreSQL started from a PyPI package when no URL is set.

It is a real PostgreSQL server (from the ``pgserver`` wheel), so the same SQL and code paths run
on it. Every process that uses the same data directory shares one server.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from .errors import ConfigurationError

log = structlog.get_logger("hyrex_like.embedded")

_lock = threading.Lock()
_servers: dict[Path, str] = {}


def embedded_database_url(data_dir: Path) -> str:
    """Start (or join) the embedded server in ``data_dir`` and return its connection URL."""
    data_dir = data_dir.resolve()
    with _lock:
        if data_dir in _servers:
            return _servers[data_dir]
        try:
            from pgserver.postgres_server import get_server
        except ImportError as exc:  # pragma: no cover - only on Python versions without a wheel
            raise ConfigurationError(
                "no database configured and the embedded PostgreSQL package is not installed: "
                "set HYREX_LIKE_DATABASE_URL, or install 'pgserver' (Python <= 3.12)"
            ) from exc
        log.warning(
            "embedded_database_starting",
            data_dir=str(data_dir),
            hint="set HYREX_LIKE_DATABASE_URL to use your own PostgreSQL; "
            "HYREX_LIKE_NO_EMBEDDED=1 forbids this fallback",
        )
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode "stop": the server stops when the last process using it exits.
        server = get_server(data_dir, cleanup_mode="stop")
        url = str(server.get_uri())
        _servers[data_dir] = url
        return url
