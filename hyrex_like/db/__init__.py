"""The database layer: every SQL statement, the pools, the migrations and the row types.

Nothing outside this package builds or runs SQL. Statements live in ``hyrex_like/queries.sql``
under a name (`queries`); the schema lives in numbered migration files (top-level ``sql/``,
shipped as ``hyrex_like/_sql``; `migrate`).
"""

from __future__ import annotations

from .client import Store as Store
from .migrate import SCHEMA_VERSION_LOCK as SCHEMA_VERSION_LOCK
from .migrate import Migration as Migration
from .migrate import latest_version as latest_version
from .migrate import migrations as migrations
from .pools import PooledConnection as PooledConnection
from .queries import Numbered as Numbered
from .queries import numbered as numbered
from .queries import q as q
from .queries import queries as queries
from .rows import ClaimedRow as ClaimedRow
from .rows import FinishedRow as FinishedRow
from .rows import NewTask as NewTask
from .rows import RunRow as RunRow
from .rows import TaskRow as TaskRow
from .waker import Waker as Waker
from .worker_queries import WORKER_PLANNER_OPTIONS as WORKER_PLANNER_OPTIONS
from .worker_queries import WORKER_TCP_OPTIONS as WORKER_TCP_OPTIONS
from .worker_queries import WorkerQueries as WorkerQueries
