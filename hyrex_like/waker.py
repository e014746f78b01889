"""Temporary: moved to hyrex_like.db; removed once every import is updated."""

from __future__ import annotations

from .db.waker import Waker as Waker
