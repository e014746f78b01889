"""A task's options: `TaskConfig` (set by ``@hy.task(...)``, overridden by ``with_config``),
validated names and the default retry backoff."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import InvalidTaskOption

_NAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(kind: str, value: object) -> str:
    """Validate a task or queue name: 1-255 characters, no control characters (e.g. NUL)."""
    if not isinstance(value, str):
        raise InvalidTaskOption(f"{kind} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidTaskOption(f"{kind} must not be empty")
    if len(value) > _NAME_MAX:
        raise InvalidTaskOption(f"{kind} is {len(value)} characters long; the limit is {_NAME_MAX}")
    if _CONTROL.search(value):
        raise InvalidTaskOption(f"{kind} {value!r} contains a control character (such as NUL)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTaskOption(
            f"{kind} {value!r} is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    return value


def default_backoff(retry: int) -> float:
    """Exponential: 1 s, 2 s, 4 s, ... capped at 5 minutes."""
    return float(min(2 ** (retry - 1), 300))


class TaskConfig(BaseModel):
    """The options of a task; set by `@hy.task(...)`, overridden by `with_config(...)`."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    queue: str = "default"
    priority: int = Field(default=5, ge=1, le=10)
    max_retries: int = Field(default=0, ge=0, le=10_000)
    timeout_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    retry_backoff: float | Callable[[int], float] | None = None
    on_error: Callable[[Exception], Any] | None = None
    async_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    """Most attempts of this ``async def`` task one executor runs at once (within the
    worker's ``--async-concurrency``); None: no cap of its own."""

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        return check_name("queue", value)

    @field_validator("priority", "max_retries", "async_concurrency", mode="before")
    @classmethod
    def _strict_int(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name == "async_concurrency":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value

    @field_validator("retry_backoff")
    @classmethod
    def _backoff(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not callable(value):
            if isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"must be a finite number of seconds >= 0, got {value!r}")
        return value

    def backoff_schedule(self) -> list[float]:
        """One delay (seconds) per retry, evaluated now: a callable is called with 1, 2, ..."""
        delays: list[float] = []
        for retry in range(1, self.max_retries + 1):
            backoff = self.retry_backoff
            if backoff is None:
                delay: Any = default_backoff(retry)
            elif callable(backoff):
                try:
                    delay = backoff(retry)
                except Exception as exc:
                    raise InvalidTaskOption(
                        f"retry_backoff({retry}) raised {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                delay = backoff
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise InvalidTaskOption(
                    f"retry_backoff({retry}) returned {delay!r}; it must return seconds as a number"
                )
            if not math.isfinite(delay) or delay < 0:
                raise InvalidTaskOption(f"retry_backoff({retry}) returned {delay!r}; must be >= 0")
            delays.append(float(delay))
        return delays


def _config(owner: str, base: TaskConfig | None, options: dict[str, Any]) -> TaskConfig:
    """Validate options into a TaskConfig, with an error naming the owner and the option."""
    given = {k: v for k, v in options.items() if v is not _UNSET}
    try:
        if base is None:
            return TaskConfig(**given)
        return TaskConfig(**(base.model_dump() | given))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'option'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidTaskOption(f"invalid option for task {owner}: {problems}") from None
    except InvalidTaskOption as exc:
        raise InvalidTaskOption(f"invalid option for task {owner}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SendOptions:
    """When a send's task becomes due and the key it is sent once under, as ``with_config``
    holds them (a send's own arguments override them). At most one of ``delay`` (seconds) and
    ``run_at`` (timezone-aware) is set."""

    delay: float | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None

    def run_after(self) -> datetime | None:
        """The due time of a task sent now: ``run_at``, or now plus ``delay`` (this clock)."""
        if self.run_at is not None:
            return self.run_at
        if self.delay is not None:
            return datetime.now(UTC) + timedelta(seconds=self.delay)
        return None


def check_delay(owner: str, value: object) -> float:
    """A delay as seconds: a timedelta or a number, finite and >= 0."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidTaskOption(
            f"invalid option for task {owner}: delay must be a timedelta or a number of "
            f"seconds, got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidTaskOption(
            f"invalid option for task {owner}: delay must be finite and >= 0, got {value!r}"
        )
    try:
        datetime.now(UTC) + timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidTaskOption(
            f"invalid option for task {owner}: delay {value!r} is past the year 9999"
        ) from None
    return seconds


def check_run_at(owner: str, value: object) -> datetime:
    """A due time: a timezone-aware datetime (a naive one is ambiguous: whose clock?)."""
    if not isinstance(value, datetime):
        raise InvalidTaskOption(
            f"invalid option for task {owner}: run_at must be a datetime, got "
            f"{type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTaskOption(
            f"invalid option for task {owner}: run_at {value.isoformat()} is a naive datetime; "
            "give it a timezone, e.g. datetime(..., tzinfo=UTC) or datetime.now(UTC) + "
            "timedelta(...)"
        )
    return value


def check_key(owner: str, value: object, what: str = "idempotency_key") -> str:
    """An idempotency key: checked as a name is (1-255 characters, no control characters)."""
    try:
        return check_name(what, value)
    except InvalidTaskOption as exc:
        raise InvalidTaskOption(f"invalid option for task {owner}: {exc}") from None


def send_options(
    owner: str,
    base: SendOptions | None,
    delay: Any,
    run_at: Any,
    idempotency_key: Any,
    *,
    unset: Any,
) -> SendOptions | None:
    """``base`` with the options given (those that are not ``unset``) replacing its own, checked.

    A delay or a run_at replaces both of base's timing options; giving both at once is refused.
    None for no option at all (the plain send path).
    """
    delay_given, run_at_given = delay is not unset, run_at is not unset
    if delay_given and run_at_given and delay is not None and run_at is not None:
        raise InvalidTaskOption(f"invalid option for task {owner}: give delay or run_at, not both")
    seconds, due = (base.delay, base.run_at) if base is not None else (None, None)
    if delay_given or run_at_given:
        seconds = check_delay(owner, delay) if delay_given and delay is not None else None
        due = check_run_at(owner, run_at) if run_at_given and run_at is not None else None
    key = base.idempotency_key if base is not None else None
    if idempotency_key is not unset:
        key = None if idempotency_key is None else check_key(owner, idempotency_key)
    if seconds is None and due is None and key is None:
        return None
    return SendOptions(seconds, due, key)


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
