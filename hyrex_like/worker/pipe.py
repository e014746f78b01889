"""One executor as the parent holds it: its process, and its pipe read without blocking.

Progress items (``update_progress``, see `protocol`) are taken out of the messages as they are
read and left in the handle's ``progress`` deque, for the progress writer's thread."""

from __future__ import annotations

import multiprocessing.connection as mpc
import os
import pickle
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import PROGRESS, Job


@dataclass
class ExecutorHandle:
    """An executor process and its end of the pipe. Its jobs are in the ledger, under
    ``ledger.assigned[index]``."""

    index: int
    process: Any  # a multiprocessing Process (forked or spawned)
    conn: mpc.Connection
    head_started: float | None = None  # monotonic; None: nothing running
    ready: bool = False
    born: float = field(default_factory=time.monotonic)
    # the head a take-back was asked for, and when (asked again if it went unanswered)
    took_back_for: Job | None = None
    took_back_at: float = 0.0
    # sizes of the batches sent and not fully answered: the first is running, the rest wait
    # unread in the pipe
    batches: deque[int] = field(default_factory=deque)
    inbox: bytearray = field(default_factory=bytearray)  # bytes read, not yet a whole message
    # (PROGRESS, key, attempt, json) items read, oldest first: the progress writer takes them
    progress: deque[tuple[Any, ...]] = field(default_factory=deque)
    _sock: socket.socket | None = None

    def answered_at(self, position: int) -> None:
        """The job at ``position`` among those sent and not answered has answered (out of order:
        a take-back): count it off its batch."""
        batches = self.batches
        for i, size in enumerate(batches):
            if position < size:
                if size == 1:
                    del batches[i]
                else:
                    batches[i] = size - 1
                return
            position -= size

    def read_messages(self) -> list[Any]:
        """Every message the executor has sent so far, without blocking: one read for all of
        them (``recv`` per message cost a poll and two reads each)."""
        if self._sock is None:
            # The pipe is a socketpair: a socket view of its descriptor can read without
            # blocking (MSG_DONTWAIT) while sends keep the blocking descriptor.
            self._sock = socket.socket(fileno=os.dup(self.conn.fileno()))
            # socket() applies socket.setdefaulttimeout(), i.e. O_NONBLOCK on the descriptor
            # the pipe shares; sends to the executor must block.
            self._sock.setblocking(True)
        while True:
            try:
                chunk = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                break  # the executor is gone; the pool's reap deals with it
            self.inbox += chunk
            if len(chunk) < 1 << 20:
                break
        out = []
        view = self.inbox
        pos = 0
        # multiprocessing's framing: a signed 4-byte big-endian length (-1: an 8-byte length
        # follows), then a pickle.
        while len(view) - pos >= 4:
            size = int.from_bytes(view[pos : pos + 4], "big", signed=True)
            start = pos + 4
            if size == -1:
                if len(view) - pos < 12:
                    break
                size = int.from_bytes(view[pos + 4 : pos + 12], "big")
                start = pos + 12
            if len(view) - start < size:
                break
            msg = pickle.loads(view[start : start + size])
            pos = start + size
            if type(msg) is list and msg and msg[0][0] == PROGRESS:
                n = 1
                while n < len(msg) and msg[n][0] == PROGRESS:
                    n += 1
                self.progress.extend(msg[:n])
                if n == len(msg):
                    continue
                msg = msg[n:]
            out.append(msg)
        if pos:
            del self.inbox[:pos]
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.conn.close()
