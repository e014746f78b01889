"""The library stays quiet: importing it and sending print nothing and configure nothing.

Library events go to the standard ``logging`` tree (``hyrex_like.*``) unless the application
configured structlog; only the CLI and the worker set up output of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from .helpers import ROOT

SEND = """
import structlog
from hyrex_like import HyrexRegistry

hy = HyrexRegistry({url!r}, schema={schema!r})


@hy.task
def add(n: int) -> int:
    return n + 1


handle = add.send(1)  # the first send creates the schema (auto-migrate)
hy.close()
assert handle.id is not None
assert not structlog.is_configured(), "the library configured structlog"
"""


def _run(script: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=60,
    )


def test_a_script_that_imports_and_sends_prints_nothing(database_url, schema):
    proc = _run(SEND.format(url=database_url, schema=schema))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_library_events_go_to_the_standard_logging_tree(database_url, schema):
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.INFO,"
        " format='%(name)s|%(levelname)s|%(message)s')\n"
        + SEND.format(url=database_url, schema=schema)
    )
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if "schema_migrated" in line]
    assert len(lines) == 1, proc.stderr
    name, level, message = lines[0].split("|", 2)
    assert (name, level) == ("hyrex_like.db", "INFO")
    assert message.startswith("schema_migrated ") and f"schema={schema} " in message


def test_an_app_that_configured_structlog_gets_library_events_through_its_own_config(
    database_url, schema
):
    script = (
        "import json, sys, structlog\n"
        "def to_stderr(logger, method, event):\n"
        "    sys.stderr.write('APP ' + json.dumps(event, default=str) + '\\n')\n"
        "    raise structlog.DropEvent\n"
        "structlog.configure(processors=[to_stderr])\n"
        + SEND.format(url=database_url, schema=schema).replace(
            'assert not structlog.is_configured(), "the library configured structlog"', ""
        )
    )
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    [line] = [line for line in proc.stderr.splitlines() if "schema_migrated" in line]
    assert line.startswith("APP "), proc.stderr
