"""The README's examples run as written.

A fenced code block in README.md preceded by a marker comment is part of this test:

- ``<!-- readme: file NAME -->`` writes the block to ``NAME`` in a fresh directory;
- ``<!-- readme: python NAME -->`` writes it to ``NAME`` and runs it with this Python (exit 0);
- ``<!-- readme: worker -->`` starts the block's one command (a ``hyrex-like run-worker``) in the
  background; it must still be running when the blocks after it have run, and stop with exit 0
  on SIGTERM.

Blocks run in README order against this test's database and schema. Every Python file is also
checked with ``mypy --strict``, since the README promises typed code.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT

MARKER = re.compile(r"<!-- readme: (file|python|worker)\s*([^ ]*) -->\n```[a-z]*\n(.*?)```", re.S)
BIN = Path(sys.executable).parent


def readme_blocks() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    return [(kind, name, body) for kind, name, body in MARKER.findall(text)]


def test_readme_marks_runnable_blocks() -> None:
    kinds = [kind for kind, _, _ in readme_blocks()]
    # the fifteen-line app, the worker command and the sending script at least
    assert kinds.count("file") >= 1 and "worker" in kinds and kinds.count("python") >= 2, kinds


def test_readme_examples_run_as_written(database_url: str, schema: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYREX_LIKE_")}
    env.update(
        HYREX_LIKE_DATABASE_URL=database_url,
        HYREX_LIKE_SCHEMA=schema,
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
    )
    env.pop("PYTHONPATH", None)  # as a user runs them: the app imports from the working directory
    workers: list[subprocess.Popen[bytes]] = []
    python_files: list[str] = []
    try:
        for kind, name, body in readme_blocks():
            if kind == "worker":
                log = open(tmp_path / f"worker-{len(workers)}.log", "wb")  # noqa: SIM115
                workers.append(
                    subprocess.Popen(
                        shlex.split(body.strip()),
                        cwd=tmp_path,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                log.close()
                continue
            (tmp_path / name).write_text(body)
            python_files.append(name)
            if kind == "python":
                proc = subprocess.run(
                    [sys.executable, name],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
                assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}\n{logs}"
        for w in workers:
            assert w.poll() is None, "a README worker exited early"
            w.send_signal(signal.SIGTERM)
            assert w.wait(60) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    typed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *python_files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert typed.returncode == 0, typed.stdout + typed.stderr


@pytest.mark.parametrize("kind", ["python", "file"])
def test_marked_python_blocks_are_not_empty(kind: str) -> None:
    for k, name, body in readme_blocks():
        if k == kind:
            assert name.endswith(".py") and body.strip(), (k, name)
