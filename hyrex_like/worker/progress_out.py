"""The executor's side of progress: what a running task reported with ``update_progress``,
taken to the parent.

``update_progress`` only keeps the value on the task's context (a few attribute writes: it may
run in a tight loop). The executor reads it from there at two moments:

- while the attempt runs, a sampler thread checks every `PROGRESS_INTERVAL` whether a new value
  was reported, and sends it as a ``(PROGRESS, task id, attempt, json)`` message (the parent
  writes the latest of each attempt at most every half second);
- when the attempt ends, its last value rides on its result (one more field), so the parent
  writes it with the outcome: a task that reads completed shows its last value.

The value is checked (and turned into JSON) there, not at the call: a value JSON cannot hold
fails the attempt when it ends, naming the task (`ProgressOut.final`).
"""

from __future__ import annotations

import pickle
import threading
import time
from multiprocessing.connection import Connection

from ..context import HyrexContext, _progress_json
from ..errors import PayloadNotSerializable, PayloadTooLarge
from .protocol import PROGRESS

PROGRESS_INTERVAL = 0.1
"""How often the sampler looks for a new value of the running attempt (the parent writes every
0.5 s)."""


class ProgressOut:
    """One executor's progress: the running attempt's context, once its task asked for it, and
    the sampler thread (started with the first such attempt)."""

    def __init__(self, conn: Connection, send_lock: threading.Lock) -> None:
        self.conn = conn
        self.send_lock = send_lock  # the executor's: one message on the pipe at a time
        self.ctx: HyrexContext | None = None  # the running attempt's, if it was built
        self.sent = 0  # how many reports of that attempt the last message covered
        self.wake = threading.Event()  # set while an attempt with a context runs
        self.sampler: threading.Thread | None = None

    def track(self, ctx: HyrexContext) -> HyrexContext:
        """The running attempt's context was just built: sample it while it runs."""
        self.sent = 0
        self.ctx = ctx
        if self.sampler is None:
            self.sampler = threading.Thread(target=self._sample, name="hyrex-progress", daemon=True)
            self.sampler.start()
        if not self.wake.is_set():  # (set stays set while attempts follow each other)
            self.wake.set()
        return ctx

    def final(self, task_name: str, strict: bool, key: bytes | None = None) -> str | None:
        """The ending attempt's last value as JSON (None: it reported none), and the end of its
        sampling. A value JSON cannot hold raises (`PayloadNotSerializable`, `PayloadTooLarge`,
        naming the task) when ``strict`` (the attempt succeeded: it fails instead), and is
        dropped otherwise (the attempt failed already: its own error stands)."""
        ctx, self.ctx = self.ctx, None
        return _last_json(ctx, task_name, strict)

    def _sample(self) -> None:  # the sampler thread
        while True:
            self.wake.wait()
            time.sleep(PROGRESS_INTERVAL)
            ctx = self.ctx
            if ctx is None:
                self.wake.clear()
                if self.ctx is not None:  # (tracked between the read and the clear)
                    self.wake.set()
                continue
            count = _new_reports(ctx, self.sent)
            if count is None:
                continue
            item = _item(ctx)
            if item is None:
                continue
            with self.send_lock:
                if self.ctx is not ctx:
                    continue  # it ended meanwhile: its last value went with its result
                self.sent = count
                try:
                    self.conn.send_bytes(pickle.dumps([item], pickle.HIGHEST_PROTOCOL))
                except OSError:
                    return  # the parent is gone


class ProgressMany(ProgressOut):
    """The same, for an executor whose async tasks run side by side (`lanes`): each running
    attempt's context by its task id, sampled together, one message per round."""

    def __init__(self, conn: Connection, send_lock: threading.Lock) -> None:
        super().__init__(conn, send_lock)
        self.ctxs: dict[bytes, HyrexContext] = {}
        self.sent_of: dict[bytes, int] = {}

    def track(self, ctx: HyrexContext) -> HyrexContext:
        key = ctx.task_id.bytes
        self.ctxs[key] = ctx
        self.sent_of[key] = 0
        if self.sampler is None:
            self.sampler = threading.Thread(target=self._sample, name="hyrex-progress", daemon=True)
            self.sampler.start()
        if not self.wake.is_set():
            self.wake.set()
        return ctx

    def final(self, task_name: str, strict: bool, key: bytes | None = None) -> str | None:
        assert key is not None
        ctx = self.ctxs.pop(key, None)
        self.sent_of.pop(key, None)
        return _last_json(ctx, task_name, strict)

    def _sample(self) -> None:  # the sampler thread
        while True:
            self.wake.wait()
            time.sleep(PROGRESS_INTERVAL)
            ctxs = list(self.ctxs.items())  # (a copy: the loop adds and removes meanwhile)
            if not ctxs:
                self.wake.clear()
                if self.ctxs:
                    self.wake.set()
                continue
            counts: list[tuple[bytes, HyrexContext, int]] = []
            items = []
            for key, ctx in ctxs:
                count = _new_reports(ctx, self.sent_of.get(key, 0))
                item = None if count is None else _item(ctx)
                if item is not None and count is not None:
                    counts.append((key, ctx, count))
                    items.append(item)
            if not items:
                continue
            with self.send_lock:
                # only attempts still running: an ended one's last value went with its result
                live = [
                    (item, key, count)
                    for item, (key, ctx, count) in zip(items, counts, strict=True)
                    if self.ctxs.get(key) is ctx
                ]
                if not live:
                    continue
                for _, key, count in live:
                    self.sent_of[key] = count
                try:
                    message = [item for item, _, _ in live]
                    self.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
                except OSError:
                    return  # the parent is gone


def _last_json(ctx: HyrexContext | None, task_name: str, strict: bool) -> str | None:
    """``ctx``'s last reported value as JSON (see `ProgressOut.final`)."""
    if ctx is None:
        return None
    private = ctx.__pydantic_private__
    assert private is not None
    if not private["_progress_n"]:
        return None
    try:
        return _progress_json(task_name, private["_progress"])
    except (PayloadNotSerializable, PayloadTooLarge):
        if strict:
            raise
        return None


def _new_reports(ctx: HyrexContext, sent: int) -> int | None:
    """How many reports ``ctx`` has made, if more than ``sent``; else None."""
    private = ctx.__pydantic_private__
    assert private is not None
    count: int = private["_progress_n"]
    return None if count == sent else count


def _item(ctx: HyrexContext) -> tuple[str, bytes, int, str] | None:
    """A PROGRESS message item for ``ctx``'s last value (None: JSON cannot hold it)."""
    private = ctx.__pydantic_private__
    assert private is not None
    try:
        data = _progress_json(ctx.task_name, private["_progress"])
    except Exception:  # (a value JSON cannot hold, or one a task thread changed meanwhile)
        return None  # the attempt's end checks its last value and says what is wrong
    return (PROGRESS, ctx.task_id.bytes, ctx.attempt_number, data)
