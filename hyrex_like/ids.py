"""Task ids: time-ordered UUIDs (version 7) chosen by the sender, strictly increasing within a
process, so a retried send cannot write a second row and a batch is claimed in order."""

from __future__ import annotations

import os
import threading
import time
import uuid


def new_task_ids(n: int) -> list[uuid.UUID]:
    """``n`` time-ordered UUIDs (version 7), strictly increasing within this process."""
    global _last_task_id
    noise = os.urandom(10 * n)  # one system call for the batch; 74 random bits per id
    out = []
    with _task_id_lock:
        base = _uuid7_base()
        last = _last_task_id
        for k in range(n):
            last = _uuid7_next(base, int.from_bytes(noise[10 * k : 10 * k + 10]), last)
            out.append(uuid.UUID(int=last))
        _last_task_id = last
    return out


def new_task_id() -> uuid.UUID:
    """`new_task_ids` for one id, without the batch's lists (`send`'s hot path)."""
    global _last_task_id
    rand = int.from_bytes(os.urandom(10))
    with _task_id_lock:
        _last_task_id = value = _uuid7_next(_uuid7_base(), rand, _last_task_id)
    return uuid.UUID(int=value)


def _uuid7_base() -> int:
    """The version 7 bits for this millisecond: timestamp, version and variant."""
    ms = time.time_ns() // 1_000_000
    return (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62


def _uuid7_next(base: int, rand: int, last: int) -> int:
    """The id after ``last`` from 80 random bits (74 used). Within one millisecond the random
    bits would sort at random; ids from this process stay strictly increasing (RFC 9562 6.2,
    method 3) so a send_many batch is claimed in the order it was given. 62 random low bits
    leave room for any burst."""
    value = base | ((rand >> 64) & 0xFFF) << 64 | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    return value if value > last else last + 1


_task_id_lock = threading.Lock()
_last_task_id = 0
