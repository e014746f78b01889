"""One embedded database per project, wherever a process starts: the nearest ``.hyrex_like/``
upward (not above a git work tree's root), else one at that root, else in the working
directory; ``HYREX_LIKE_DATA_DIR`` overrides (``HYREX_LIKE_EMBEDDED_DIR`` is its old name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hyrex_like.config import Settings, find_data_dir

from .helpers import embedded_env, wait_until

APP = """
from hyrex_like import HyrexRegistry
hy = HyrexRegistry()

@hy.task
def echo(n: int) -> int:
    return n * 2
"""

# Sends from the project's root and waits for a worker (started elsewhere) to run the task.
SEND_AND_WAIT = """
import app
handle = app.echo.send(21)
print("SENT", handle.id, flush=True)
handle.wait(90)
print("DONE", handle.status, handle.result, flush=True)
"""


def test_the_nearest_hyrex_like_directory_above_is_used(tmp_path):
    (tmp_path / ".hyrex_like").mkdir()
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_data_dir(deep) == tmp_path / ".hyrex_like" / "pgdata"


def test_without_one_the_data_goes_to_the_git_root(tmp_path):
    (tmp_path / ".git").mkdir()
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_data_dir(deep) == tmp_path / ".hyrex_like" / "pgdata"


def test_a_hyrex_like_directory_above_the_git_root_is_another_projects(tmp_path):
    (tmp_path / ".hyrex_like").mkdir()  # say, in the home directory
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    assert find_data_dir(project / "src") == project / ".hyrex_like" / "pgdata"


def test_outside_any_project_the_data_goes_to_the_working_directory(tmp_path):
    # tmp_path is under /tmp: no .git or .hyrex_like above it on a sane machine
    if any((p / ".hyrex_like").is_dir() or (p / ".git").exists() for p in tmp_path.parents):
        pytest.skip("a .hyrex_like or .git directory above the temporary directory")
    assert find_data_dir(tmp_path) == tmp_path / ".hyrex_like" / "pgdata"


def test_data_dir_variable_overrides_and_the_old_name_still_works(tmp_path):
    assert Settings.from_env({"HYREX_LIKE_DATA_DIR": "/srv/q"}).embedded_dir == Path("/srv/q")
    assert Settings.from_env({"HYREX_LIKE_EMBEDDED_DIR": "/srv/o"}).embedded_dir == Path("/srv/o")
    both = {"HYREX_LIKE_DATA_DIR": "/srv/new", "HYREX_LIKE_EMBEDDED_DIR": "/srv/old"}
    assert Settings.from_env(both).embedded_dir == Path("/srv/new")


@pytest.mark.embedded
def test_a_worker_started_in_a_subdirectory_runs_what_was_sent_from_the_root(workdir):
    (workdir / "app.py").write_text(APP)
    sub = workdir / "services" / "jobs"
    sub.mkdir(parents=True)
    # The app is imported from the root in both processes; only the working directories differ.
    env = embedded_env(PYTHONPATH=os.pathsep.join([str(workdir), embedded_env()["PYTHONPATH"]]))
    sender = subprocess.Popen(
        [sys.executable, "-c", SEND_AND_WAIT],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    worker_log = workdir / "worker.log"
    worker = None
    try:
        assert sender.stdout is not None
        line = sender.stdout.readline()
        assert "embedded_database_started" in line, line  # the sender made the root's database
        while not line.startswith("SENT"):
            line = sender.stdout.readline()
            assert line, "the sender exited before sending"
        with open(worker_log, "w") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "hyrex_like", "run-worker", "app:hy", "--processes", "1"],
                cwd=sub,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        out_text, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, out_text
        assert "DONE completed 42" in out_text, worker_log.read_text()

        startup = next(
            ln for ln in worker_log.read_text().splitlines() if "embedded_database_" in ln
        )
        assert "embedded_database_joined" in startup  # the sender's server, not a new one
        assert f"data_dir={workdir / '.hyrex_like' / 'pgdata'}" in startup
        assert not (sub / ".hyrex_like").exists()
        assert not (workdir / "services" / ".hyrex_like").exists()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker_log.read_text()
        # The worker was the last user: it stopped the server as it exited.
        wait_until(
            lambda: not (workdir / ".hyrex_like" / "pgdata" / "postmaster.pid").exists(),
            30,
            what="the last user to stop the server",
        )
    finally:
        for proc in (sender, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


@pytest.mark.embedded
def test_data_dir_variable_puts_the_data_there_and_the_start_line_says_so(workdir):
    target = workdir / "elsewhere" / "db"
    code = "from hyrex_like import HyrexRegistry\nHyrexRegistry().migrate()\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env=embedded_env(HYREX_LIKE_DATA_DIR=str(target)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "PG_VERSION").is_file()
    assert not (workdir / ".hyrex_like").exists()
    assert f"data_dir={target}" in proc.stdout + proc.stderr
