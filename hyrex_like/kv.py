"""``hy.kv``: a key-value store in the registry's database, for tasks and applications.

Values are JSON, checked as task results are (`payloads.checked_json`: no NaN or Infinity, no
NUL, no lone surrogate, not nested too deep) and at most `MAX_KV_BYTES` as JSON; they come back
as JSON-decoded Python data (a datetime or a model is stored as its JSON form). A key may
expire: ``ttl`` seconds (or a timedelta) from the time the server runs the statement. An
expired key is never read back and counts as absent; the workers' upkeep deletes such rows.

Every call takes ``conn=`` to run in the caller's transaction (a psycopg ``Connection`` for the
sync calls, an ``AsyncConnection`` for the async ones): a rollback takes the change back. Bad
keys, ttls and values are refused before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from .db import Store
from .db import kv as db_kv
from .durations import MAX_SECONDS
from .errors import InvalidKVArgument, PayloadTooLarge
from .payloads import checked_json

MAX_KV_BYTES = 1024 * 1024
"""The largest value ``hy.kv`` stores, as JSON text (1 MiB); larger ones raise
`PayloadTooLarge`."""
MAX_KEY_LENGTH = 512
"""The longest key, in characters."""


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidKVArgument(f"a kv key must be a str, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidKVArgument(
            f"a kv key must have 1 to {MAX_KEY_LENGTH} characters; this one has {len(key)}"
            + (f" (it starts {key[:40]!r})" if key else "")
        )
    if "\x00" in key:
        raise InvalidKVArgument(f"kv key {key!r} holds a NUL character, which PostgreSQL refuses")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKVArgument(
                f"kv key {key!r} holds a lone surrogate, which is not valid Unicode"
            ) from None
    return key


def _check_ttl(key: str, ttl: float | timedelta | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise InvalidKVArgument(
            f"kv key {key!r}: ttl must be seconds (a number) or a timedelta, not "
            f"{type(ttl).__name__}"
        )
    # (under a microsecond, the server's timestamps would round it to no time at all)
    if not (math.isfinite(seconds) and 1e-6 <= seconds <= MAX_SECONDS):
        raise InvalidKVArgument(
            f"kv key {key!r}: ttl must be at least a microsecond and at most {MAX_SECONDS:g} "
            f"seconds (100 years), not {ttl!r}"
        )
    return seconds


def _write_params(key: object, value: Any, ttl: float | timedelta | None) -> dict[str, Any]:
    """The statement parameters of a set, every argument checked (nothing is written on a
    refusal)."""
    checked = _check_key(key)
    seconds = _check_ttl(checked, ttl)
    data = checked_json(value, None, f"kv key {checked!r} was given a value")
    if len(data) > MAX_KV_BYTES:
        raise PayloadTooLarge(
            f"the value of kv key {checked!r} is {len(data)} bytes as JSON, over the limit "
            f"MAX_KV_BYTES ({MAX_KV_BYTES}); store large data elsewhere and keep its "
            "reference here"
        )
    return {"key": checked, "value": data.decode("utf-8"), "ttl": seconds}


class KV:
    """The key-value store of one registry's database (``hy.kv``); see the module docstring.

    Sync calls use the registry's pool (or ``conn``), async ones (``a``-prefixed) its async
    pool (or an ``AsyncConnection`` given as ``conn``)."""

    def __init__(self, store: Store | Callable[[], Store]) -> None:
        # A callable follows `HyrexRegistry.configure`, which replaces the registry's store.
        self._store: Callable[[], Store] = (lambda: store) if isinstance(store, Store) else store

    def __repr__(self) -> str:
        return f"<KV schema={self._store().schema!r}>"

    # -- sync --------------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> None:
        """Store ``value`` (JSON) under ``key``, replacing any value; with ``ttl`` (seconds or a
        timedelta) it expires that long from now, without, never (a set drops an earlier
        ttl). Raises `InvalidKVArgument`, `PayloadNotSerializable` or `PayloadTooLarge`."""
        params = _write_params(key, value, ttl)
        db_kv.run(self._store(), "kv_set", params, conn, f"setting kv key {key!r}")

    def get(
        self, key: str, default: Any = None, *, conn: psycopg.Connection[Any] | None = None
    ) -> Any:
        """The value of ``key`` as Python data (JSON-decoded), or ``default`` if there is no
        such key or it expired. A stored JSON null comes back as None, not ``default``."""
        params = {"key": _check_key(key)}
        return db_kv.run(self._store(), "kv_get", params, conn, f"reading kv key {key!r}", default)

    def delete(self, key: str, *, conn: psycopg.Connection[Any] | None = None) -> bool:
        """Delete ``key``: whether a live (unexpired) value was there."""
        params = {"key": _check_key(key)}
        return bool(db_kv.run(self._store(), "kv_delete", params, conn, f"deleting kv key {key!r}"))

    def set_if_absent(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> bool:
        """Store ``value`` under ``key`` only if the key is absent or expired: True if this
        call wrote it. Of many callers racing on one key, exactly one wins (a lock or a
        once-only marker; with ``ttl``, a lease that lapses)."""
        params = _write_params(key, value, ttl)
        what = f"setting kv key {key!r} if absent"
        return bool(db_kv.run(self._store(), "kv_set_if_absent", params, conn, what))

    # -- async -------------------------------------------------------------------------------

    async def aset(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        """`set` from async code."""
        params = _write_params(key, value, ttl)
        await db_kv.arun(self._store(), "kv_set", params, conn, f"setting kv key {key!r}")

    async def aget(
        self, key: str, default: Any = None, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Any:
        """`get` from async code."""
        params = {"key": _check_key(key)}
        what = f"reading kv key {key!r}"
        return await db_kv.arun(self._store(), "kv_get", params, conn, what, default)

    async def adelete(self, key: str, *, conn: psycopg.AsyncConnection[Any] | None = None) -> bool:
        """`delete` from async code."""
        params = {"key": _check_key(key)}
        what = f"deleting kv key {key!r}"
        return bool(await db_kv.arun(self._store(), "kv_delete", params, conn, what))

    async def aset_if_absent(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> bool:
        """`set_if_absent` from async code."""
        params = _write_params(key, value, ttl)
        what = f"setting kv key {key!r} if absent"
        return bool(await db_kv.arun(self._store(), "kv_set_if_absent", params, conn, what))


class KVMethods:
    """``hy.kv`` on the registry."""

    store: Store

    @property
    def kv(self) -> KV:
        """The key-value store in this registry's database (`KV`)."""
        return KV(lambda: self.store)
