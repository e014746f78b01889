"""Temporary: moved to hyrex_like.db; removed once every import is updated."""

from __future__ import annotations

from .db.client import Store as Store
from .db.client import _check_url as _check_url
from .db.client import _scrub as _scrub
from .db.errors import _retry_failed as _retry_failed
from .db.errors import _translate as _translate
from .db.migrate import SCHEMA_VERSION_LOCK as SCHEMA_VERSION_LOCK
from .db.migrate import Migration as Migration
from .db.migrate import latest_version as latest_version
from .db.migrate import migrations as migrations
from .db.pools import PooledConnection as PooledConnection
from .db.pools import _closing as _closing
from .db.queries import _SET_SEARCH_PATH as _SET_SEARCH_PATH
from .db.queries import _SWAP_SEARCH_PATH as _SWAP_SEARCH_PATH
from .db.queries import Numbered as Numbered
from .db.queries import numbered as numbered
from .db.queries import q as q
from .db.queries import queries as queries
from .db.rows import ClaimedRow as ClaimedRow
from .db.rows import FinishedRow as FinishedRow
from .db.rows import NewTask as NewTask
from .db.rows import RunRow as RunRow
from .db.rows import TaskRow as TaskRow
from .db.rows import _array_literal as _array_literal
from .db.rows import _array_text as _array_text
from .db.worker_queries import WORKER_PLANNER_OPTIONS as WORKER_PLANNER_OPTIONS
from .db.worker_queries import WORKER_TCP_OPTIONS as WORKER_TCP_OPTIONS
from .db.worker_queries import WorkerQueries as WorkerQueries
from .ids import new_task_id as new_task_id
from .ids import new_task_ids as new_task_ids
