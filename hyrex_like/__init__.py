"""hyrex-like: typed, durable background tasks on PostgreSQL."""

from __future__ import annotations

from .config import Settings
from .context import HyrexContext, get_hyrex_context
from .errors import (
    ConfigurationError,
    DatabaseError,
    DuplicateTaskName,
    HyrexLikeError,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    SchemaNotReady,
    TaskDefinitionError,
    TaskNotFound,
    TaskWaitTimeout,
    WorkerError,
)
from .registry import (
    HyrexRegistry,
    TaskConfig,
    TaskDefinition,
    TaskHandle,
    TaskRun,
    TaskSender,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DuplicateTaskName",
    "HyrexContext",
    "HyrexLikeError",
    "HyrexRegistry",
    "InvalidTaskOption",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "SchemaNotReady",
    "Settings",
    "TaskConfig",
    "TaskDefinition",
    "TaskHandle",
    "TaskRun",
    "TaskSender",
    "TaskWaitTimeout",
    "WorkerError",
    "__version__",
    "get_hyrex_context",
]
