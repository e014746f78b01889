"""The standard streams an executor started with, put back when a task leaves them broken."""

from __future__ import annotations

import fcntl
import os
import sys
from typing import Any


class _StdStreams:
    """The standard streams an executor started with, put back when a task leaves them broken.

    A task may close descriptors 0-2 (``os.close(1)``, ``closerange``, a daemonizing library)
    or close or replace ``sys.stdout`` and friends. Every later task of the executor would then
    fail to print (EBADF, "I/O operation on closed file"), or print into whatever file took
    the number next. `intact` runs after every task and looks at what printing needs:
    ``sys.stdout`` and ``sys.stderr`` (the same objects, open) and descriptors 1 and 2, with
    one ``fcntl(F_GETFD)`` each (~0.7 us in all on the benchmark machine, where a system call
    costs ~0.3 us; a third call for stdin would add that again, for a stream no task should
    read). When it fails, `restore` looks at all of 0-2 and stdin too.

    A number closed and taken again by a file the task opened shows as not inheritable
    (Python opens every file close-on-exec, PEP 446; descriptors 0-2 are made inheritable at
    start, as standard streams are): the standard stream is put back over it, so later prints
    and children's output go where they went before, not into the task's file (which from
    then on refers to the stream). A descriptor the task redirected on purpose with
    ``os.dup2`` (inheritable) is left as the task set it.
    """

    _STDIO = (("stdin", "r"), ("stdout", "w"), ("stderr", "w"))

    def __init__(self) -> None:
        self.saved: list[int] = []  # close-on-exec copies of descriptors 0-2
        for fd in (0, 1, 2):
            try:
                os.set_inheritable(fd, True)
            except OSError:  # started without it: /dev/null, so no file of ours takes it
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
                os.set_inheritable(fd, True)
            self.saved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        for name, mode in self._STDIO:
            if getattr(sys, name) is None:  # no stream at start: one that discards
                setattr(sys, name, open(os.devnull, mode))  # kept for good
        self.objects: list[Any] = [sys.stdin, sys.stdout, sys.stderr]
        self.stdout, self.stderr = sys.stdout, sys.stderr

    def intact(self) -> bool:
        stdout, stderr = self.stdout, self.stderr
        inheritable = os.get_inheritable
        try:
            return (
                sys.stdout is stdout
                and sys.stderr is stderr
                and not (stdout.closed or stderr.closed)
                and inheritable(1)
                and inheritable(2)
            )
        except OSError:  # a descriptor is closed
            return False

    def restore(self) -> tuple[list[str], bool]:
        """Put back what is broken; returns what was, and whether ``sys.stderr`` is new."""
        repaired = []
        for fd, saved in enumerate(self.saved):
            try:
                if os.get_inheritable(fd):
                    continue
                repaired.append(f"fd {fd} taken by a file the task opened after closing it")
            except OSError:
                repaired.append(f"fd {fd} closed")
            os.dup2(saved, fd)
        new_stderr = False
        for fd, (name, mode) in enumerate(self._STDIO):
            original = self.objects[fd]
            if original.closed:
                new = _reopen(original, fd, mode)
                for attr in (name, f"__{name}__"):
                    if getattr(sys, attr) is original:
                        setattr(sys, attr, new)
                self.objects[fd] = new
                new_stderr = new_stderr or name == "stderr"
                repaired.append(f"sys.{name} closed")
            if getattr(sys, name) is not self.objects[fd]:
                setattr(sys, name, self.objects[fd])
                repaired.append(f"sys.{name} replaced")
        self.stdout, self.stderr = sys.stdout, sys.stderr
        return repaired, new_stderr


def _reopen(original: Any, fd: int, mode: str) -> Any:
    """A new text stream like ``original`` (closed by a task), on its standard descriptor."""
    name = getattr(original, "name", None)
    options: dict[str, Any] = {
        "encoding": getattr(original, "encoding", None),
        "errors": getattr(original, "errors", None),
    }
    if mode == "w" and getattr(original, "line_buffering", False):
        options["buffering"] = 1
    if name == os.devnull:  # multiprocessing gives its children a stdin reading /dev/null
        return open(os.devnull, mode, **options)  # the process's stream from now on
    return open(fd, mode, closefd=False, **options)  # likewise
