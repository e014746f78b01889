"""The app of the dashboard tests (tests/test_dashboard_http.py): a few tasks that leave
something for each page to show, including text meant to break out of the HTML.

- ``greet``: returns its payload with a greeting; ``parent`` sends two ``greet`` children.
- ``explode``: raises ValueError with its text (no retries), so a run has a traceback.
- ``HOSTILE`` (a task whose *name* is markup): returns its payload.
- ``pipeline``: a workflow greet_step >> shout.
- ``nightly``: a schedule (every day at 03:00 UTC) that the tests never wait for.
"""

from __future__ import annotations

from typing import Any

from hyrex_like import HyrexRegistry, cron

hy = HyrexRegistry()

HOSTILE = "<script>alert(1)</script>"
HOSTILE_TEXT = "<img src=x onerror=alert(2)>"


@hy.task
def greet(payload: dict[str, Any]) -> dict[str, Any]:
    return {"hello": payload}


@hy.task
def parent(n: int) -> int:
    for i in range(n):
        greet.send({"child": i})
    return n


@hy.task(max_retries=0)
def explode(text: str) -> None:
    raise ValueError(text)


@hy.task(name=HOSTILE)
def hostile(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@hy.task
def greet_step(name: str) -> str:
    return f"hello {name}"


@hy.task
def shout(text: str) -> str:
    return text.upper()


pipeline = hy.workflow("pipeline", [greet_step, shout])


@hy.task(schedule=cron("0 3 * * *"))
def nightly() -> None:
    return None
