"""The decorated task keeps the function's types: mypy flags a wrong payload to `send` and to a
direct call, and nothing else in a file of correct uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from .helpers import ROOT

APP = """\
from pydantic import BaseModel

from hyrex_like import HyrexRegistry, TaskHandle

hy = HyrexRegistry("postgresql://u@h/db")


class ProcessContext(BaseModel):
    file_path: str
    options: dict[str, str]


@hy.task(queue="processing", max_retries=3, retry_backoff=lambda n: n * 10)
def process_file(context: ProcessContext) -> dict[str, str]:
    return {"file": context.file_path}


@hy.task
def tick() -> int:
    return 1


@hy.task
async def fetch(url: str) -> int:
    return len(url)


ctx = ProcessContext(file_path="/x", options={})
process_file.send(42)  # BAD-SEND
process_file(42)  # BAD-CALL
out: dict[str, str] = process_file(ctx)
handle: TaskHandle[dict[str, str]] = process_file.send(ctx)
process_file.send({"file_path": "/x", "options": {}})
process_file.with_config(queue="high-priority", priority=9).send(ctx)
process_file.send_many([ctx, ctx])
n: int = tick()
tick.send()
coro = fetch("https://example.org")
fetch.send("https://example.org")
reveal_type(process_file)  # REVEAL
"""


def test_mypy_flags_exactly_the_wrong_payloads(tmp_path: Path):
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    lines = APP.splitlines()
    bad = {i + 1 for i, line in enumerate(lines) if "# BAD-" in line}
    reveal = next(i + 1 for i, line in enumerate(lines) if "# REVEAL" in line)

    env = dict(os.environ)
    env["MYPYPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--show-error-codes",
            "--no-error-summary",
            str(app),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    out = proc.stdout
    errors = [m for m in re.finditer(r"^.*app\.py:(\d+): error: (.*)$", out, re.M)]
    assert {int(m.group(1)) for m in errors} == bad, out
    assert len(errors) == 2, out
    assert all("arg-type" in m.group(2) or "call-overload" in m.group(2) for m in errors), out
    assert all('"int"' in m.group(2) for m in errors), out
    # The checker sees the payload and result types, not Any.
    assert re.search(
        rf"app\.py:{reveal}: note: Revealed type is "
        r'"hyrex_like\.registry\.TaskDefinition\[app\.ProcessContext, '
        r'(builtins\.)?dict\[(builtins\.)?str, (builtins\.)?str\]\]"',
        out,
    ), out
