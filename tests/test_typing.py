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
from typing import Any

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, TaskHandle, Workflow, WorkflowHandle, get_hyrex_context

hy = HyrexRegistry("postgresql://u@h/db")


class ProcessContext(BaseModel):
    file_path: str
    options: dict[str, str]


class Doubled(BaseModel):
    n: int
    doubled: int


@hy.task(queue="processing", max_retries=3, retry_backoff=lambda n: n * 10)
def process_file(context: ProcessContext) -> dict[str, str]:
    return {"file": context.file_path}


@hy.task
def tick() -> int:
    return 1


@hy.task
async def fetch(url: str) -> int:
    return len(url)


@hy.task(queue="io")
async def beat() -> str:
    return "ok"


@hy.task
def double(n: int) -> Doubled:
    return Doubled(n=n, doubled=2 * n)


# The README's task: the context outside a worker is a local one, never None.
@hy.task(queue="processing", max_retries=3, timeout_seconds=300, retry_backoff=lambda n: n * 10)
def process_readme(context: ProcessContext) -> dict[str, Any]:
    ctx = get_hyrex_context()
    return {"status": "completed", "file": context.file_path, "attempt": ctx.attempt_number}


ctx = ProcessContext(file_path="/x", options={})
process_file.send(42)  # BAD-SEND arg-type "int"
process_file(42)  # BAD-CALL arg-type "int"
out: dict[str, str] = process_file(ctx)
handle: TaskHandle[dict[str, str]] = process_file.send(ctx)
process_file.send({"file_path": "/x", "options": {}})
process_file.with_config(queue="high-priority", priority=9).send(ctx)
process_file.send_many([ctx, ctx])
process_file.send(file_path="/x")  # BAD-KEYWORDS arg-type "file_path"
n: int = tick()
tick.send()
coro = fetch("https://example.org")
fetch.send("https://example.org")
# An async task's result is what it returns once awaited; a direct call is the coroutine.
fetched: int = fetch.send("https://example.org").wait().result
fetched_handle: TaskHandle[int] = fetch.with_config(priority=9).send("https://example.org")
not_awaited: int = fetch("https://example.org")  # BAD-ASYNC-CALL assignment "Coroutine"
wrong_fetch: str = fetch.send("x").wait().result  # BAD-ASYNC-RESULT assignment "int"
fetch.send(3)  # BAD-ASYNC-SEND arg-type "int"
beaten: str = beat.send().wait().result
beat.send(1)  # BAD-ASYNC-NO-PAYLOAD arg-type "int"
reveal_type(process_file)  # REVEAL
doubled: int = double.send(2).wait().result.doubled
double.send(2).wait().result.tripled  # BAD-RESULT attr-defined "tripled"
wrong: str = double.send(2).wait().result.n  # BAD-RESULT-TYPE assignment "int"
attempt: int = process_readme(ctx)["attempt"]
maybe = get_hyrex_context(default=None)
maybe.attempt_number  # BAD-OPTIONAL union-attr "None"
with hy:
    tick.send()


@hy.task
def inc(n: int) -> int:
    return n + 1


# A workflow annotated with its payload and result types: sends and results are checked.
pipeline: Workflow[int, Doubled] = hy.workflow("typed", [inc, double])
run: WorkflowHandle[Doubled] = pipeline.send(1)
twice: int = pipeline.send(1).wait().result.doubled
pipeline.send("x")  # BAD-WF-SEND arg-type "str"
pipeline.send(1).wait().result.tripled  # BAD-WF-RESULT attr-defined "tripled"
graph = hy.workflow("graph", inc >> double)


async def web_handler() -> int:
    async with hy:
        h = await double.asend(3)
        length: int = await fetch("https://example.org")
        text: str = await beat()
        return h.result.doubled + length + len(text) + (await fetch.asend("x")).result
"""


def test_mypy_flags_exactly_the_wrong_payloads(tmp_path: Path):
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    lines = APP.splitlines()
    # line -> (error code, a word the message must hold)
    bad = {
        i + 1: tuple(line.split("# BAD-")[1].split()[1:3])
        for i, line in enumerate(lines)
        if "# BAD-" in line
    }
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
    assert {int(m.group(1)) for m in errors} == set(bad), out
    assert len(errors) == len(bad), out
    for m in errors:
        code, word = bad[int(m.group(1))]
        assert f"[{code}]" in m.group(2) and word.strip('"') in m.group(2), m.group(0)
    # The checker sees the payload and result types, not Any.
    assert re.search(
        rf"app\.py:{reveal}: note: Revealed type is "
        r'"hyrex_like\.task\.TaskDefinition\[app\.ProcessContext, '
        r'(builtins\.)?dict\[(builtins\.)?str, (builtins\.)?str\]\]"',
        out,
    ), out
