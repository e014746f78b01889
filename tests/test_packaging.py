"""The wheel: built from the repo, it ships the migrations, the named queries and ``py.typed``,
and a plain (non-editable) install into a fresh venv can create the schema with `init-db`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyrex_like.db import latest_version

from .helpers import ROOT, query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("hyrex_like-*.whl")
    yield built


def test_wheel_ships_migrations_queries_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hyrex_like/_sql/0001_initial.sql" in names
    assert "hyrex_like/queries.sql" in names
    assert "hyrex_like/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_declares_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as zf:
        [entry_points] = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "hyrex-like = hyrex_like.cli:main" in text


def test_fresh_venv_install_of_the_wheel_can_init_db(wheel, tmp_path, database_url, schema):
    venv = tmp_path / "venv"
    # The base interpreter, not this venv's: nothing from the test environment leaks in.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    # Run from a directory without the source tree, so only the installed package is importable.
    where = subprocess.run(
        [str(python), "-c", "import hyrex_like; print(hyrex_like.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "hyrex_like",
            "init-db",
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # every migration shipped inside the wheel was applied
    versions = query(database_url, schema, "SELECT version FROM schema_migrations ORDER BY 1")
    assert versions == [(v,) for v in range(1, latest_version() + 1)]
    script = subprocess.run(
        [
            str(venv / "bin" / "hyrex-like"),
            "migrate",
            "--database-url",
            database_url,
            "--schema",
            schema,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert script.returncode == 0, script.stderr
    assert "up to date" in script.stdout
