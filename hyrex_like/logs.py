"""Logging: quiet by default for the library, structlog output for the CLI and the worker.

The library never configures logging. Its modules take their loggers from `get_logger`, which
decides where an event goes when it is logged:

- the application (or the ``hyrex-like`` CLI, through `configure_logging`) configured
  structlog: the event goes through that configuration, as ``structlog.get_logger`` would;
- otherwise: to the standard ``logging`` logger of the same name (``hyrex_like.db``,
  ``hyrex_like.worker``, ...), as ``event key=value ...``. With no handler configured, Python
  shows warnings and errors on stderr (``logging.lastResort``) and drops the rest, so a
  script that only sends prints nothing; ``logging.getLogger("hyrex_like")`` tunes or silences
  the whole library.

Never structlog's own default, which prints every event to stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route structlog events to stderr: JSON lines (``json``) or readable text (``console``).

    For the CLI and the worker's processes only: the library itself never calls it."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        raise ValueError(f"log format must be 'json' or 'console', got {fmt!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """The logger a library module uses: see the module docstring for where events go."""
    return _LibraryLogger(name, {})


class _LibraryLogger:
    """Picks the destination at each call, so an app that configures structlog after
    importing hyrex-like still gets the events. `bind` returns structlog's own bound logger
    once structlog is configured: the worker binds after the CLI configured it, so its
    per-task log calls cost exactly what structlog's cost."""

    __slots__ = ("_name", "_context")

    def __init__(self, name: str, context: Mapping[str, Any]) -> None:
        self._name = name
        self._context = dict(context)

    def bind(self, **values: Any) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name).bind(**self._context, **values)
        return _LibraryLogger(self._name, {**self._context, **values})

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name).bind(**self._context)
        return structlog.stdlib.BoundLogger(
            logging.getLogger(self._name),
            [structlog.stdlib.filter_by_level, _to_logging],
            dict(self._context),
        )

    def debug(self, event: str, **values: Any) -> Any:
        return self._target().debug(event, **values)

    def info(self, event: str, **values: Any) -> Any:
        return self._target().info(event, **values)

    def warning(self, event: str, **values: Any) -> Any:
        return self._target().warning(event, **values)

    def error(self, event: str, **values: Any) -> Any:
        return self._target().error(event, **values)

    def critical(self, event: str, **values: Any) -> Any:
        return self._target().critical(event, **values)

    def exception(self, event: str, **values: Any) -> Any:
        return self._target().exception(event, **values)


def _value(value: Any) -> str:
    """A field as it reads best: a plain token (a path, a URL, a number) bare, else its repr."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "'\"=" for c in value):
        return value
    return repr(value)


def _to_logging(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Last processor on the ``logging`` route: one readable message, the event's fields kept
    whole in ``record.hyrex_like`` for handlers that want them."""
    exc_info = event_dict.pop("exc_info", None)
    fields = dict(event_dict)
    event = event_dict.pop("event", "")
    text = " ".join([str(event), *(f"{k}={_value(v)}" for k, v in event_dict.items())])
    kwargs: dict[str, Any] = {"extra": {"hyrex_like": fields}}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (text,), kwargs
