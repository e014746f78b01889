"""A task's options: `TaskConfig` (set by ``@hy.task(...)``, overridden by ``with_config``),
validated names and the default retry backoff."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        return check_name("queue", value)

    @field_validator("priority", "max_retries", mode="before")
    @classmethod
    def _strict_int(cls, value: Any) -> Any:
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


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
