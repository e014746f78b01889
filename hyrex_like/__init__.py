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
    InvalidKVArgument,
    InvalidQueueSetting,
    InvalidSchedule,
    InvalidTaskId,
    InvalidTaskOption,
    KeyInUse,
    NoTaskContext,
    PayloadNotSerializable,
    PayloadTooLarge,
    SchemaNotReady,
    TaskAttemptError,
    TaskCanceled,
    TaskDefinitionError,
    TaskNotCompleted,
    TaskNotFound,
    TaskTimeout,
    TaskWaitTimeout,
    UnknownTaskName,
    WorkerError,
    WorkflowDefinitionError,
    WorkflowNotFound,
    WorkflowStateError,
)
from .handle import TaskError, TaskHandle, TaskRun
from .inspect import MinuteCount, QueueStats, Stats, TaskDetail, TaskPage, TaskSummary, WorkerInfo
from .observer import WorkerObserver
from .payloads import MAX_NESTING_DEPTH
from .queues import QueueInfo
from .registry import HyrexRegistry
from .schedules import Schedule, ScheduleInfo, cron, crontab, every
from .states import RunStatus, TaskStatus, WorkflowState
from .task import AsyncTaskDefinition, TaskDefinition, TaskSender
from .task_config import TaskConfig
from .workflow_handle import StepState, WorkflowHandle
from .workflow_status import WORKFLOW_ACTIVE, WORKFLOW_DONE, WorkflowStatus
from .workflows import Workflow, WorkflowFailure, step

__version__ = "0.1.0"

__all__ = [
    "AsyncTaskDefinition",
    "ConfigurationError",
    "DatabaseError",
    "DuplicateTaskName",
    "ExecutorLost",
    "HyrexContext",
    "HyrexLikeError",
    "HyrexRegistry",
    "InvalidKVArgument",
    "InvalidQueueSetting",
    "InvalidSchedule",
    "InvalidTaskId",
    "InvalidTaskOption",
    "KeyInUse",
    "MAX_NESTING_DEPTH",
    "MinuteCount",
    "NoTaskContext",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "QueueInfo",
    "QueueStats",
    "RunStatus",
    "Schedule",
    "ScheduleInfo",
    "SchemaNotReady",
    "Settings",
    "Stats",
    "TaskAttemptError",
    "TaskCanceled",
    "TaskConfig",
    "TaskDefinition",
    "TaskDefinitionError",
    "TaskDetail",
    "TaskError",
    "TaskHandle",
    "TaskNotCompleted",
    "TaskNotFound",
    "TaskPage",
    "TaskRun",
    "TaskSender",
    "TaskStatus",
    "TaskSummary",
    "TaskTimeout",
    "TaskWaitTimeout",
    "UnknownTaskName",
    "WorkerError",
    "WorkerInfo",
    "WorkerObserver",
    "StepState",
    "WORKFLOW_ACTIVE",
    "WORKFLOW_DONE",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowFailure",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowStateError",
    "WorkflowStatus",
    "WorkflowState",
    "step",
    "__version__",
    "cron",
    "crontab",
    "every",
    "get_hyrex_context",
]
