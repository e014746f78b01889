"""hyrex-like: typed, durable background tasks on PostgreSQL."""

from __future__ import annotations

from .config import Settings
from .context import HyrexContext, get_hyrex_context
from .errors import (
    ConfigurationError,
    DatabaseError,
    DuplicateTaskName,
    ExecutorLost,
    HyrexLikeError,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    SchemaNotReady,
    TaskAttemptError,
    TaskDefinitionError,
    TaskNotFound,
    TaskTimeout,
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
    "ExecutorLost",
    "HyrexContext",
    "HyrexLikeError",
    "HyrexRegistry",
    "InvalidTaskOption",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "SchemaNotReady",
    "Settings",
    "TaskAttemptError",
    "TaskConfig",
    "TaskDefinition",
    "TaskDefinitionError",
    "TaskHandle",
    "TaskNotFound",
    "TaskRun",
    "TaskSender",
    "TaskTimeout",
    "TaskWaitTimeout",
    "WorkerError",
    "__version__",
    "get_hyrex_context",
]
