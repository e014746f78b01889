"""``hy.kv``: the key-value store on a real PostgreSQL schema per test: values, expiry,
set_if_absent races, the async calls, a caller's transaction, refusals. Its use from tasks and
the deletion of expired keys: tests/test_kv_worker.py."""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from hyrex_like import HyrexRegistry, PayloadNotSerializable, PayloadTooLarge
from hyrex_like.errors import InvalidKVArgument
from hyrex_like.kv import KV, MAX_KEY_LENGTH, MAX_KV_BYTES

from .helpers import count, query, wait_until


def _kv_rows(database_url: str, schema: str) -> int:
    return count(database_url, schema, table="kv")


def _expire(database_url: str, schema: str, key: str) -> None:
    """Move ``key``'s expiry into the past (as if its ttl ran out)."""
    query(
        database_url,
        schema,
        "UPDATE kv SET expires_at = now() - interval '1 second' WHERE key = %s",
        [key],
    )


# ------------------------------------------------------------------ set, get, delete


VALUES: list[Any] = [
    {"n": 1, "tags": ["a", "b"], "nested": {"x": None, "ok": True}},
    [1, 2.5, "three", None],
    "text with é and 😀",
    42,
    2**70,
    -0.5,
    True,
    None,
]


def test_values_come_back_as_json_decoded_python_data(registry: HyrexRegistry):
    for i, value in enumerate(VALUES):
        registry.kv.set(f"k{i}", value)
    for i, value in enumerate(VALUES):
        assert registry.kv.get(f"k{i}", "missing") == value
    # a stored null is a value, not an absence
    assert registry.kv.get(f"k{len(VALUES) - 1}", "missing") is None
    assert registry.kv.get("absent") is None
    assert registry.kv.get("absent", {"d": 1}) == {"d": 1}


def test_set_replaces_and_delete_says_whether_a_live_key_was_there(
    registry: HyrexRegistry, database_url: str, schema: str
):
    kv = registry.kv
    kv.set("k", 1)
    kv.set("k", {"v": 2})
    assert kv.get("k") == {"v": 2}
    assert _kv_rows(database_url, schema) == 1
    assert kv.delete("k") is True
    assert kv.delete("k") is False
    assert kv.get("k", "gone") == "gone"
    assert _kv_rows(database_url, schema) == 0


def test_keys_at_the_limits_and_any_text(registry: HyrexRegistry):
    longest = "é" * MAX_KEY_LENGTH  # characters, not bytes
    registry.kv.set(longest, "long")
    registry.kv.set("a", "short")
    registry.kv.set("spaces and 'quotes'; DROP TABLE kv; --", "sql")
    assert registry.kv.get(longest) == "long"
    assert registry.kv.get("a") == "short"
    assert registry.kv.get("spaces and 'quotes'; DROP TABLE kv; --") == "sql"


def test_a_value_of_exactly_max_kv_bytes_is_stored(registry: HyrexRegistry):
    value = "x" * (MAX_KV_BYTES - 2)  # plus the two quotes of the JSON string
    registry.kv.set("big", value)
    assert registry.kv.get("big") == value


# ------------------------------------------------------------------ expiry


def test_a_key_with_a_ttl_is_read_until_it_expires(registry: HyrexRegistry):
    registry.kv.set("short", "v", ttl=0.5)
    registry.kv.set("long", "v", ttl=timedelta(hours=1))
    assert registry.kv.get("short") == "v"
    wait_until(lambda: registry.kv.get("short", "expired") == "expired", 10, what="expiry")
    assert registry.kv.get("long") == "v"


def test_an_expired_key_is_absent_for_every_call(
    registry: HyrexRegistry, database_url: str, schema: str
):
    kv = registry.kv
    kv.set("k", "old", ttl=60)
    _expire(database_url, schema, "k")
    assert kv.get("k", "dflt") == "dflt"
    assert kv.delete("k") is False  # the row goes, but no live value was there
    assert _kv_rows(database_url, schema) == 0

    kv.set("k", "old", ttl=60)
    _expire(database_url, schema, "k")
    assert kv.set_if_absent("k", "new", ttl=60) is True
    assert kv.get("k") == "new"
    assert kv.set_if_absent("k", "newer") is False
    assert kv.get("k") == "new"


def test_set_without_ttl_drops_an_earlier_ttl(
    registry: HyrexRegistry, database_url: str, schema: str
):
    registry.kv.set("k", 1, ttl=60)
    registry.kv.set("k", 2)
    assert query(database_url, schema, "SELECT expires_at FROM kv WHERE key = 'k'") == [(None,)]
    registry.kv.set("k", 3, ttl=60)
    rows = query(
        database_url,
        schema,
        "SELECT expires_at - updated_at BETWEEN interval '59 s' AND interval '61 s' FROM kv",
    )
    assert rows == [(True,)]


# ------------------------------------------------------------------ set_if_absent


def test_set_if_absent_writes_only_an_absent_key(registry: HyrexRegistry):
    kv = registry.kv
    assert kv.set_if_absent("lock", {"owner": "a"}) is True
    assert kv.set_if_absent("lock", {"owner": "b"}) is False
    assert kv.get("lock") == {"owner": "a"}
    assert kv.delete("lock") is True
    assert kv.set_if_absent("lock", {"owner": "c"}) is True
    assert kv.get("lock") == {"owner": "c"}


def _race(threads: int, attempt: Any) -> list[bool]:
    """``attempt(i)`` on ``threads`` threads released together: each one's outcome."""
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        outcomes[i] = attempt(i)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert all(isinstance(o, bool) for o in outcomes), outcomes
    return outcomes


def test_sixteen_threads_racing_set_if_absent_on_one_key_one_wins(registry: HyrexRegistry):
    kv = registry.kv
    for round_ in range(5):
        key = f"race:{round_}"
        outcomes = _race(16, lambda i, key=key: kv.set_if_absent(key, i))
        assert outcomes.count(True) == 1, outcomes
        assert kv.get(key) == outcomes.index(True)


def test_sixteen_connections_racing_set_if_absent_one_wins(
    registry: HyrexRegistry, database_url: str, schema: str
):
    """Each thread on a connection of its own (conn=, autocommit), so all 16 statements reach
    the server at once; also over a key whose value had expired."""
    registry.migrate()
    conns = [psycopg.connect(database_url, autocommit=True) for _ in range(16)]
    try:
        for key in ("fresh", "expired"):
            if key == "expired":
                registry.kv.set(key, "old", ttl=60)
                _expire(database_url, schema, key)
            outcomes = _race(
                16, lambda i, key=key: registry.kv.set_if_absent(key, i, conn=conns[i])
            )
            assert outcomes.count(True) == 1, (key, outcomes)
            assert registry.kv.get(key) == outcomes.index(True)
    finally:
        for c in conns:
            c.close()


# ------------------------------------------------------------------ a caller's transaction


def test_conn_joins_the_callers_transaction(
    registry: HyrexRegistry, database_url: str, schema: str
):
    kv = registry.kv
    kv.set("kept", "before")
    with psycopg.connect(database_url) as conn:  # not autocommit: a transaction
        search_path = conn.execute("SHOW search_path").fetchone()
        kv.set("dropped", 1, conn=conn)
        assert kv.set_if_absent("dropped2", 2, conn=conn) is True
        assert kv.delete("kept", conn=conn) is True
        assert kv.get("dropped", conn=conn) == 1  # the transaction sees its own writes
        assert kv.get("dropped") is None  # others do not
        assert kv.get("kept") == "before"
        # the caller's search_path is put back
        assert conn.execute("SHOW search_path").fetchone() == search_path
        conn.rollback()
        assert kv.get("kept", conn=conn) == "before"
        kv.set("committed", 3, conn=conn)
        conn.commit()
    assert query(database_url, schema, "SELECT key, value FROM kv ORDER BY key") == [
        ("committed", 3),
        ("kept", "before"),
    ]


def test_async_calls_on_the_async_pool_and_on_a_callers_connection(
    registry: HyrexRegistry, database_url: str, schema: str
):
    kv = registry.kv

    async def main() -> None:
        try:
            await kv.aset("a", {"n": 1}, ttl=60)
            assert await kv.aget("a") == {"n": 1}
            assert await kv.aget("b", "dflt") == "dflt"
            assert await kv.aset_if_absent("a", 2) is False
            assert await kv.aset_if_absent("b", 2, ttl=timedelta(minutes=1)) is True
            assert await kv.adelete("a") is True
            assert await kv.adelete("a") is False
            outcomes = await asyncio.gather(*(kv.aset_if_absent("race", i) for i in range(16)))
            assert outcomes.count(True) == 1, outcomes
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await kv.aset("rolled", 1, conn=conn)
                assert await kv.aget("rolled", conn=conn) == 1
                assert await kv.aset_if_absent("rolled2", 1, conn=conn) is True
                assert await kv.adelete("b", conn=conn) is True
                await conn.rollback()
                await kv.aset("committed", 1, conn=conn)
                await conn.commit()
            with pytest.raises(InvalidKVArgument):
                await kv.aset("", 1)
            with pytest.raises(PayloadNotSerializable):
                await kv.aset_if_absent("x", math.nan)
        finally:
            await registry.store.aclose()

    asyncio.run(main())
    keys = [r[0] for r in query(database_url, schema, "SELECT key FROM kv ORDER BY key")]
    assert keys == ["b", "committed", "race"]


def test_kv_follows_the_registry_when_it_is_configured_again(database_url: str, schema: str):
    hy = HyrexRegistry(database_url, schema="t_never_used")  # nothing connects yet
    kv = hy.kv  # taken before configure: still follows the registry's store
    hy.configure(schema_name=schema)
    try:
        kv.set("k", 1)
        assert hy.kv.get("k") == 1
        assert repr(kv) == f"<KV schema={schema!r}>"
        assert isinstance(kv, KV)
    finally:
        hy.close()


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (b"bytes", "must be a str, not bytes"),
        (None, "must be a str, not NoneType"),
        ("", "1 to 512 characters; this one has 0"),
        ("k" * (MAX_KEY_LENGTH + 1), "1 to 512 characters; this one has 513"),
        ("a\x00b", "NUL"),
        ("a\ud800b", "lone surrogate"),
    ],
)
def test_bad_keys_are_refused_by_every_call(
    registry: HyrexRegistry, database_url: str, schema: str, key: Any, words: str
):
    registry.migrate()
    kv = registry.kv
    calls = [
        lambda: kv.set(key, 1),
        lambda: kv.get(key),
        lambda: kv.delete(key),
        lambda: kv.set_if_absent(key, 1),
    ]
    for call in calls:
        with pytest.raises(InvalidKVArgument, match=words):
            call()
    assert _kv_rows(database_url, schema) == 0


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (math.nan, "nan"),
        ({"a": [1, math.inf]}, r"\$\.a\[1\] is inf"),
        ("a\x00b", "NUL"),
        ({"t": "a\udc00"}, "lone surrogate"),
        ({"a\ud800": 1}, "lone surrogate"),
        (object(), "cannot be stored as JSON"),
        (_deep(250), "MAX_NESTING_DEPTH"),
    ],
)
def test_values_json_cannot_hold_are_refused_naming_the_key(
    registry: HyrexRegistry, database_url: str, schema: str, value: Any, words: str
):
    registry.migrate()
    for call in (registry.kv.set, registry.kv.set_if_absent):
        with pytest.raises(PayloadNotSerializable, match=words) as caught:
            call("the-key", value)
        assert "kv key 'the-key'" in str(caught.value)
    assert _kv_rows(database_url, schema) == 0


def test_a_value_over_max_kv_bytes_is_refused_naming_the_key(
    registry: HyrexRegistry, database_url: str, schema: str
):
    registry.migrate()
    value = "x" * (MAX_KV_BYTES - 1)  # one byte over, with the quotes
    for call in (registry.kv.set, registry.kv.set_if_absent):
        with pytest.raises(PayloadTooLarge, match="kv key 'big' is 1048577 bytes") as caught:
            call("big", value)
        assert "MAX_KV_BYTES (1048576)" in str(caught.value)
    assert _kv_rows(database_url, schema) == 0


@pytest.mark.parametrize(
    "ttl",
    [0, -1, 0.0, 1e-7, math.nan, math.inf, timedelta(0), timedelta(seconds=-5), 1e12, "10", True],
)
def test_bad_ttls_are_refused(registry: HyrexRegistry, database_url: str, schema: str, ttl: Any):
    registry.migrate()
    for call in (registry.kv.set, registry.kv.set_if_absent):
        with pytest.raises(InvalidKVArgument, match="kv key 'k': ttl must be"):
            call("k", 1, ttl=ttl)
    assert _kv_rows(database_url, schema) == 0
