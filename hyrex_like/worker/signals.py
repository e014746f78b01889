"""The worker's signals and its wake-up pipe: SIGTERM, SIGINT and SIGHUP ask for a graceful stop
(the second one forces it), and anything that must interrupt the loop's wait writes a byte.

Handlers are installed only for the worker's lifetime and restored afterwards. The executors'
own signal (`protocol.DRAIN_SIGNAL`) is part of the pipe protocol, not of this module.
"""

from __future__ import annotations

import signal
import socket
import threading
from types import FrameType
from typing import Any

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ForcedExit(BaseException):
    """Raised by the second SIGTERM/SIGINT to leave whatever the loop is blocked in."""


class Signals:
    """Stop requests (signals or `request_stop`) and the loop's wake-up pipe."""

    def __init__(self) -> None:
        self.stop_requested = False
        self._count = 0
        self._old_handlers: dict[int, Any] = {}
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def install(self) -> None:
        # SIGHUP too: closing the terminal a worker runs in stops it gracefully (its executors
        # lead their own sessions, so the hang-up does not reach them). Only the main thread
        # may set handlers: a worker run on another thread is stopped with request_stop.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _STOP_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def default_handlers(self) -> None:
        """After a forced stop: a third signal ends the process at once, as a user pressing
        Ctrl-C again expects."""
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def request_stop(self) -> None:
        """Begin a graceful stop, as SIGTERM does (safe from another thread)."""
        self.stop_requested = True
        self.wake()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count > 1:
            raise ForcedExit()
        self.request_stop()

    def wake(self) -> None:
        """Interrupt the loop's wait (from any thread)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def clear_wakes(self) -> None:
        """Empty the wake-up pipe once the loop is awake."""
        try:
            while self.wake_r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.wake_r.close()
        self._wake_w.close()
