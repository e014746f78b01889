"""Queue settings (pause, concurrency limit) and the queue listing, on a pooled connection.
`hyrex_like.queues` checks names and limits first."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg

from .admin import control_channel
from .errors import _translate
from .queries import q
from .reads import read_on_pool

if TYPE_CHECKING:
    from .client import Store


class QueueRow(NamedTuple):
    """A row of `list_queues`."""

    name: str
    concurrency_limit: int | None
    paused_at: datetime | None
    queued: int
    running: int


def _write(store: Store, name: str, params: dict[str, Any], what: str) -> list[tuple[Any, ...]]:
    params = {**params, "channel": store.channel, "control": control_channel(store.schema)}
    try:
        with store.pool().connection() as c, c.transaction():
            c.execute(q("lock_queue_settings"))
            return c.execute(q(name), params).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, what) from exc


def set_limit(store: Store, queue: str, limit: int | None) -> None:
    what = f"setting the concurrency limit of queue {queue!r}"
    _write(store, "queue_set_limit", {"name": queue, "limit": limit}, what)


def pause(store: Store, queue: str) -> None:
    _write(store, "queue_pause", {"name": queue}, f"pausing queue {queue!r}")


def resume(store: Store, queue: str) -> bool:
    rows = _write(store, "queue_resume", {"name": queue}, f"resuming queue {queue!r}")
    return bool(rows and rows[0][0])


def list_queues(store: Store) -> list[QueueRow]:
    def read(c: psycopg.Connection[Any]) -> list[QueueRow]:
        return [QueueRow(*row) for row in c.execute(q("list_queues")).fetchall()]

    return read_on_pool(store.pool(), read, "listing the queues")
