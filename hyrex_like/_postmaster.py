"""The embedded server as the operating system sees it: the pid file PostgreSQL writes, whether
that process lives and answers, and the user its programs run as (PostgreSQL refuses root).

The life cycle built on these facts (locks, start, join, stop) is :mod:`hyrex_like.embedded`'s.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._launchers import executable
from .errors import ConfigurationError
from .logs import get_logger

# The embedded server's events share one logger, whichever module logs them.
log = get_logger("hyrex_like.embedded")

SERVER_USER = "pgserver"
"""The system user the server runs as when root starts it (see :mod:`hyrex_like.embedded`)."""


@dataclass(frozen=True)
class Postmaster:
    """What ``postmaster.pid`` says about a server (see PostgreSQL's ``pidfile.h``)."""

    pid: int
    port: int
    socket_dir: str
    listen: str
    status: str

    @classmethod
    def read(cls, data_dir: Path) -> Postmaster | None:
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8:
            return None  # being written: the server is starting
        try:
            return cls(
                pid=int(lines[0]),
                port=int(lines[3]),
                socket_dir=lines[4].strip(),
                listen=lines[5].strip(),
                status=lines[7].strip(),
            )
        except ValueError:
            return None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process: alive
        return True

    def runs_elsewhere(self, data_dir: Path) -> bool:
        """Whether the pid is provably not a server of ``data_dir`` (Linux: its command line).

        Where there is no ``/proc`` this cannot be told, and the answer is False.
        """
        try:
            args = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return Path("/proc/self").exists()  # gone meanwhile (or no /proc at all)
        except PermissionError:
            return False
        return os.fsencode(data_dir) not in args

    def url(self) -> str:
        if self.listen:
            host = "127.0.0.1" if self.listen in ("*", "localhost") else self.listen.split(",")[0]
            return f"postgresql://postgres@{host}:{self.port}/postgres"
        # A server started by hyrex-like 0.1 (pgserver's own manager) listens on a socket only.
        query = urllib.parse.urlencode({"host": self.socket_dir, "port": str(self.port)})
        return f"postgresql://postgres@/postgres?{query}"

    def accepts(self) -> bool:
        """Whether the server answers on its address (not merely a live pid: pids are reused)."""
        try:
            if self.listen:
                parts = urllib.parse.urlsplit(self.url())
                with socket.create_connection((parts.hostname, self.port), timeout=2):
                    return True
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(os.path.join(self.socket_dir, f".s.PGSQL.{self.port}"))
                return True
        except OSError:
            return False


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that is free now (another program may take it later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_user(data_dir: Path) -> str | None:
    """The user to run PostgreSQL as: ``None`` (this process's own) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        owner = 0
    if owner != 0:
        return pwd.getpwuid(owner).pw_name
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise ConfigurationError(
                f"PostgreSQL cannot run as root and there is no user {SERVER_USER!r} to run "
                "it as (no useradd here to create one): create that user, run as another "
                "user, or set HYREX_LIKE_DATABASE_URL"
            ) from None
        subprocess.run(
            [useradd, "--system", "--user-group", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
        log.warning("embedded_database_user_created", user=SERVER_USER)
    return SERVER_USER


def run_program(
    bin_dir: Path, program: str, *args: str, user: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run one of the server's programs (as ``user`` if given), output captured.

    Output goes to a file, not a pipe: the server that ``pg_ctl start`` leaves running
    could otherwise hold the pipe open and keep this call waiting. A new session keeps a
    Ctrl-C meant for this process away from the server other processes share.
    """
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    cmd = [executable(bin_dir, program), *args]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            check=False,
            timeout=timeout,
            **kwargs,
        )
        out.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), None)


def let_traverse(path: Path) -> None:
    """As root: let other users pass through the directories above ``path`` (``o+x``).

    The server user must reach its data directory and its programs. Only the search bit is
    added, where missing: directory listings stay as private as they were.
    """
    changed = []
    for parent in path.parents:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            changed.append(str(parent))
    if changed:
        log.warning("embedded_database_dirs_opened", dirs=changed, mode="o+x")
