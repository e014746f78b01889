"""Library settings: one model, read once (argument > environment > default), passed down.

No other module reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .durations import MAX_SECONDS, parse_duration
from .errors import ConfigurationError
from .logs import LEVELS

ENV_PREFIX = "HYREX_LIKE_"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
PROJECT_DIR_NAME = ".hyrex_like"


def find_data_dir(start: Path) -> Path:
    """The embedded PostgreSQL's data directory for a process started in ``start``.

    Like git finding ``.git``: the nearest ``.hyrex_like/`` in ``start`` or a directory above
    it, so every process of a project shares one database wherever it was started. The search
    stops at the root of a git work tree (a directory holding ``.git``): a ``.hyrex_like/``
    above a repository (say, in the home directory) is another project's. With none found, the
    new one goes at that root, else in ``start``. The data is in ``<that>/pgdata``.
    """
    for directory in (start, *start.parents):
        if (directory / PROJECT_DIR_NAME).is_dir() or (directory / ".git").exists():
            return directory / PROJECT_DIR_NAME / "pgdata"
    return start / PROJECT_DIR_NAME / "pgdata"


class Settings(BaseModel):
    """Everything configurable about the library outside of task options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = None
    """PostgreSQL URL or conninfo string; ``None`` means the embedded database."""
    schema_name: str = "hyrex_like"
    """PostgreSQL schema holding the tables; lets several apps (or tests) share a database."""
    allow_embedded: bool = True
    """With no database URL, start a private PostgreSQL (``HYREX_LIKE_NO_EMBEDDED=1`` forbids)."""
    embedded_dir: Path = Field(default_factory=lambda: find_data_dir(Path.cwd()))
    """The embedded PostgreSQL's data directory (``HYREX_LIKE_DATA_DIR``; default: see
    :func:`find_data_dir`)."""
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    """Largest accepted serialized payload, in bytes (default 1 MiB)."""
    auto_migrate: bool = True
    """Create or upgrade the schema on first use."""
    pool_max_size: int = Field(default=4, ge=1)
    connect_timeout: float = Field(default=5.0, gt=0)
    wake_interval: float = Field(default=0.005, ge=0, le=1)
    """Least time (s) between two wake-ups (NOTIFY) that a process sends for the tasks it sent.
    A wake-up goes out at once after a quiet spell; sends closer together than this share one.
    0 sends one per commit (more work for the database and the sender at high rates)."""
    tracing: bool = False
    """OpenTelemetry spans (extra ``hyrex-like[otel]``): one per send, its trace context kept in
    the task row, and one per attempt, the send's child (`hyrex_like.otel`). Off: opentelemetry
    is never imported and the row's ``trace_context`` stays NULL."""

    @field_validator("schema_name")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _SCHEMA_RE.match(value):
            raise ValueError(
                f"schema name {value!r} must be lowercase letters, digits and underscores, "
                "starting with a letter or underscore, at most 50 characters"
            )
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``overrides`` (those not ``None``), then the environment."""
        environ = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, raw in (
            ("database_url", environ.get(ENV_PREFIX + "DATABASE_URL")),
            ("schema_name", environ.get(ENV_PREFIX + "SCHEMA")),
            # HYREX_LIKE_EMBEDDED_DIR: the earlier name, still read (DATA_DIR wins)
            (
                "embedded_dir",
                environ.get(ENV_PREFIX + "DATA_DIR") or environ.get(ENV_PREFIX + "EMBEDDED_DIR"),
            ),
            ("max_payload_bytes", environ.get(ENV_PREFIX + "MAX_PAYLOAD_BYTES")),
            ("auto_migrate", environ.get(ENV_PREFIX + "AUTO_MIGRATE")),
            ("wake_interval", environ.get(ENV_PREFIX + "WAKE_INTERVAL")),
            ("tracing", environ.get(ENV_PREFIX + "TRACING")),
        ):
            if raw not in (None, ""):
                values[key] = raw
        no_embedded = environ.get(ENV_PREFIX + "NO_EMBEDDED", "")
        if no_embedded.strip().lower() in {"1", "true", "yes", "on"}:
            values["allow_embedded"] = False
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValueError as exc:
            raise ConfigurationError(f"invalid hyrex-like settings: {exc}") from exc


def redact_dsn(dsn: str | None) -> str:
    """Return ``dsn`` with any password replaced by ``***``, safe to log or raise."""
    if not dsn:
        return "<embedded>"
    # URL form: scheme://user:password@host/...
    redacted = re.sub(r"(://[^:/@?#]*):([^@/?#]*)@", r"\1:***@", dsn)
    # URL query form: ?password=... and conninfo form: password=...
    redacted = re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", r"\1***", redacted)
    return redacted


MAX_PROCESSES = 512
"""The most executor processes a worker runs (``--processes``)."""


def default_processes(cpu_count: Callable[[], int | None] = os.cpu_count) -> int:
    """The default ``--processes``: one executor per CPU, at most `MAX_PROCESSES` (so a larger
    machine still starts with no flags); 1 when the count is unknown."""
    return max(1, min(cpu_count() or 1, MAX_PROCESSES))


AUTO_PREFETCH = 16
"""Jobs handed to an executor at once when ``--prefetch`` is not given."""


class WorkerOptions(BaseModel):
    """How a worker runs. The CLI maps its flags onto these."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    queues: tuple[str, ...] = ()
    """Queues to serve; empty means every queue."""
    processes: int = Field(default_factory=default_processes, ge=1, le=MAX_PROCESSES)
    prefetch: int | None = Field(default=None, ge=1, le=10_000)
    """Most jobs handed to an executor at once; fewer for longer tasks (see `busy_after`).
    None (auto): 16, and while the queue is deep the worker claims ahead what its executors
    will start within a fraction of a second at the pace they show. A number also caps what
    the worker holds at ``processes x prefetch``."""
    busy_after: float = Field(default=0.2, ge=0.001, le=60.0)
    """Seconds a task may run before its executor counts as busy with a long task: it gets no
    more jobs, the jobs queued behind that task are taken back to run elsewhere, and claims
    count no room for it. Also the longest a job is meant to wait behind others in an
    executor: batches are sized by the run times seen. Claimed jobs that no executor of the
    worker can start for 5 times this long go back to the queue, for another worker."""
    async_concurrency: int = Field(default=1, ge=1, le=10_000)
    """Most ``async def`` tasks each executor runs at once on its event loop (a task's own
    ``async_concurrency`` caps it further). Sync tasks always run alone, one at a time per
    executor. 1 (default): every task runs alone, as before."""
    grace_period: float = Field(default=30.0, ge=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    stale_after: float = Field(default=30.0, gt=0)
    """Seconds without a heartbeat after which a worker's running tasks are requeued."""
    poll_interval: float = Field(default=1.0, gt=0)
    startup_timeout: float = Field(default=15.0, ge=0)
    """How long to keep trying to reach the database at start before giving up; also how
    long a refusal for good (`outages.refusal`) met while running is retried before the
    worker stops (at start, a refusal stops it at once)."""
    retention: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    """Seconds after which the worker deletes finished tasks (every final status) and their
    runs, a few at a time on its upkeep thread; None (default) keeps them. Also a duration
    such as ``"7d"`` (`hyrex_like.durations`)."""
    scheduler: bool = True
    """Run the scheduler (`hyrex_like.worker.scheduler`) when the app has scheduled tasks: it
    turns their ticks into tasks. Any number of workers may run it at once (each tick makes
    one task); False (``--no-scheduler``) leaves it to other workers or to
    ``hyrex-like run-scheduler``."""
    log_level: str = "info"
    log_format: str = "console"

    @property
    def handoff(self) -> int:
        """Most jobs handed to an executor at once: ``prefetch``, or 16 when auto."""
        return self.prefetch or AUTO_PREFETCH

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # what `@hy.task(queue=...)` accepts: a worker for any other name would serve nothing
        from .registry import check_name  # (the registry imports this module)

        return tuple(check_name("queue", q) for q in value)

    @field_validator("retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {value!r}")
        return value

    @field_validator("log_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError(f"log format must be 'console' or 'json', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_heartbeat(self) -> WorkerOptions:
        if self.stale_after <= self.heartbeat_interval:
            raise ValueError(
                f"stale_after ({self.stale_after:g}s) must be more than heartbeat_interval "
                f"({self.heartbeat_interval:g}s): other workers would declare this one lost "
                "between two of its heartbeats and run its tasks a second time"
            )
        return self
