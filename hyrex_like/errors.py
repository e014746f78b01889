"""The exceptions hyrex-like raises, as one tree a caller can catch at the right level.

    HyrexLikeError
    ├── ConfigurationError        bad settings: no database, embedded forbidden, bad URL
    ├── TaskDefinitionError       (also TypeError) a task function or option is unusable
    │   ├── DuplicateTaskName
    │   └── WorkflowDefinitionError  a workflow's steps do not fit (types, names, shape)
    ├── InvalidTaskOption         (also ValueError) an option value is out of range
    │   └── InvalidSchedule       a task's schedule is unusable (bad cron, zone, payload...)
    ├── PayloadTooLarge           (also ValueError) a payload over the configured limit
    ├── PayloadNotSerializable    (also ValueError) a payload or result that cannot be stored
    │                             as JSON (NUL, NaN/Infinity, a lone surrogate, too deep)
    ├── InvalidTaskId             (also ValueError) `get_handle` got something that is no UUID
    ├── InvalidKVArgument         (also ValueError) a `hy.kv` key or ttl it cannot use
    ├── TaskNotFound              (also LookupError) no task row with that id
    ├── WorkflowNotFound          (also LookupError) no workflow row with that id
    ├── WorkflowStateError        pause/resume/cancel asked of a workflow in the wrong state
    ├── TaskNotCompleted          `handle.result` of a task that has not completed
    ├── NoTaskContext             (also LookupError) `get_hyrex_context()` outside any task
    ├── TaskWaitTimeout           (also TimeoutError) `TaskHandle.wait` ran out of time
    ├── DatabaseError             the database failed; the driver error is in ``__cause__``
    │   └── SchemaNotReady        the schema is missing or newer than this library
    ├── WorkerError               the worker could not start (bad app path, ...)
    └── TaskAttemptError          passed to ``on_error`` when the worker ended an attempt
        ├── TaskTimeout           the attempt ran past ``timeout_seconds``
        └── ExecutorLost          the executor process died during the attempt

Pydantic's own ``ValidationError`` is raised for payloads that do not match the task's
annotation (it names the field and the problem), with a note naming the task (and, for
``send_many``, the item): ``except pydantic.ValidationError`` keeps working.
"""

from __future__ import annotations


class HyrexLikeError(Exception):
    """Base class for every error raised by hyrex-like."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class ConfigurationError(HyrexLikeError):
    """The configuration is unusable."""


class TaskDefinitionError(HyrexLikeError, TypeError):
    """A task function cannot be registered."""


class DuplicateTaskName(TaskDefinitionError, ValueError):
    """Two tasks in one registry share a name."""


class InvalidTaskOption(HyrexLikeError, ValueError):
    """A task option is unknown or out of range."""


class InvalidSchedule(InvalidTaskOption):
    """A task's schedule (``@hy.task(schedule=...)``) is unusable: a bad cron expression, a
    time zone that is no IANA name, a naive datetime, an interval under a second, an unknown
    catch-up policy, or a payload the task refuses."""


class PayloadTooLarge(HyrexLikeError, ValueError):
    """The serialized payload is larger than the configured limit."""


class PayloadNotSerializable(HyrexLikeError, ValueError):
    """The payload cannot be stored as JSON in PostgreSQL."""


class InvalidTaskId(HyrexLikeError, ValueError):
    """A task id must be a UUID."""


class TaskNotFound(HyrexLikeError, LookupError):
    """No task with this id exists."""


class TaskNotCompleted(HyrexLikeError):
    """The task has no result: it has not completed (yet), or it failed or was canceled."""

    def __init__(self, message: str | None = None, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class NoTaskContext(HyrexLikeError, LookupError):
    """`get_hyrex_context()` was called outside a task."""


class TaskWaitTimeout(HyrexLikeError, TimeoutError):
    """The task did not reach a final status in time."""


class DatabaseError(HyrexLikeError):
    """The database operation failed."""


class SchemaNotReady(DatabaseError):
    """The hyrex-like schema is missing or not at the version this library expects."""


class WorkerError(HyrexLikeError):
    """The worker cannot start."""


class TaskAttemptError(HyrexLikeError):
    """An attempt ended without the task raising (the worker stopped it)."""


class TaskTimeout(TaskAttemptError, TimeoutError):
    """The attempt ran past its timeout and its executor was killed."""


class ExecutorLost(TaskAttemptError):
    """The executor process running the attempt died."""


class TaskCanceled(TaskAttemptError):
    """The task was canceled while this attempt ran; its worker stopped it (a run's
    ``error_type`` names it; ``on_error`` is not called for it)."""


class UnknownTaskName(HyrexLikeError, LookupError):
    """``hy.send(name, ...)`` named a task this registry does not know, and it refuses unknown
    names (``HyrexRegistry(refuse_unknown_tasks=True)``)."""


class WorkflowDefinitionError(TaskDefinitionError):
    """A workflow cannot be built from these steps: a step's parameter type does not accept
    what the step before it returns, two steps share a name, there is not exactly one final
    step, ... The message names the steps and the types."""


class WorkflowNotFound(HyrexLikeError, LookupError):
    """No workflow row with that id (or it was pruned)."""


class WorkflowStateError(HyrexLikeError):
    """``pause``/``resume``/``cancel`` asked of a workflow whose state does not allow it (for
    example resuming one that is running); the message says its state and what is allowed."""


class KeyInUse(HyrexLikeError):
    """A retry by hand would queue a task whose idempotency key another live task now holds."""


class InvalidKVArgument(HyrexLikeError, ValueError):
    """``hy.kv`` got a key (a str of 1 to 512 characters, no NUL) or a ttl (positive, finite
    seconds or a timedelta) it cannot use; nothing was written."""


class InvalidQueueSetting(InvalidTaskOption):
    """A queue name (1 to 255 characters, no control characters) or a concurrency limit (a
    positive int, or None for none) that cannot be used; nothing was written."""


__all__ = [
    "ExecutorLost",
    "KeyInUse",
    "TaskCanceled",
    "UnknownTaskName",
    "TaskAttemptError",
    "TaskTimeout",
    "ConfigurationError",
    "DatabaseError",
    "DuplicateTaskName",
    "HyrexLikeError",
    "InvalidKVArgument",
    "InvalidQueueSetting",
    "InvalidTaskId",
    "InvalidSchedule",
    "InvalidTaskOption",
    "NoTaskContext",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "SchemaNotReady",
    "TaskDefinitionError",
    "TaskNotCompleted",
    "TaskNotFound",
    "TaskWaitTimeout",
    "WorkerError",
    "WorkflowDefinitionError",
    "WorkflowNotFound",
    "WorkflowStateError",
]
