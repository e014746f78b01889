"""Tasks that use ``hy.kv`` (tests/test_kv.py): `hyrex-like run-worker kv_app:hy`."""

from __future__ import annotations

from hyrex_like import HyrexRegistry

hy = HyrexRegistry()


@hy.task
def remember(n: int) -> dict[str, object]:
    """Write a key, read it back and race for a once-only marker."""
    hy.kv.set(f"seen:{n}", {"n": n, "tags": ["a", "b"]})
    won = hy.kv.set_if_absent("first", n)
    return {"read": hy.kv.get(f"seen:{n}"), "won": won, "missing": hy.kv.get("nope", "dflt")}


@hy.task
async def aremember(n: int) -> dict[str, object]:
    """`remember` with the async calls."""
    await hy.kv.aset(f"aseen:{n}", [n, n * 2], ttl=3600)
    read = await hy.kv.aget(f"aseen:{n}")
    deleted = await hy.kv.adelete(f"aseen:{n}")
    return {"read": read, "deleted": deleted, "after": await hy.kv.aget(f"aseen:{n}", "gone")}
