"""Issue #12 gaps an audit found untested (the behaviour was right): what JSON cannot hold is
refused by every way of sending, not only ``.send``; ``--queue`` refuses exactly what
``@hy.task(queue=...)`` does, in its words, and ``--processes 100000`` names its bound."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from typing import Any

import pytest

from hyrex_like import (
    MAX_NESTING_DEPTH,
    HyrexRegistry,
    InvalidTaskOption,
    PayloadNotSerializable,
    cli,
)

from .apps.hostile_results_app import nested
from .helpers import count

HOSTILE = {
    "nan": ({"x": math.nan}, "$.x is nan"),
    "-inf": ({"x": [1.0, -math.inf]}, "$.x[1] is -inf"),
    "surrogate_key": ({"k\udc80": 1}, "lone surrogate"),
    "too_deep": (nested(MAX_NESTING_DEPTH + 1), f"MAX_NESTING_DEPTH ({MAX_NESTING_DEPTH})"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_every_way_of_sending_refuses_what_json_cannot_hold(registry, database_url, schema, kind):
    @registry.task
    def loose(data: dict[str, Any]) -> None:
        pass

    registry.migrate()
    payload, needle = HOSTILE[kind]
    ways = {
        "send_many": lambda: loose.send_many([{"ok": 1}, payload]),
        "asend": lambda: asyncio.run(loose.asend(payload)),
        "with_config": lambda: loose.with_config(priority=3).send(payload),
        "by_name": lambda: registry.send("loose", payload),
        "by_unknown_name": lambda: registry.send("known.elsewhere", payload),
        "asend_by_unknown_name": lambda: asyncio.run(registry.asend("known.elsewhere", payload)),
    }
    for way, call in ways.items():
        with pytest.raises(PayloadNotSerializable) as info:
            call()
        assert needle in str(info.value), (way, str(info.value))
        assert way != "send_many" or "(item 1 of send_many)" in str(info.value)
    assert count(database_url, schema) == 0


def _cli_error(*argv: str) -> str:
    """run-worker's parse of ``argv``: "" if accepted, else argparse's error line (exit 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        cli._parser().parse_args(["run-worker", "app:hy", *argv])
        return ""
    [line] = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
    return line


def test_cli_queue_names_are_checked_exactly_as_at_task_decoration() -> None:
    hy = HyrexRegistry("postgresql://u@h/db")
    names = ["", " ", "q" * 255, "q" * 256, "tab\there", "nul\x00", "\udcff", "é" * 255, "a b"]
    for i, name in enumerate(names):
        refused = ""
        try:
            hy.task(name=f"t{i}", queue=name)(lambda: None)
        except InvalidTaskOption as exc:
            refused = str(exc)
        error = _cli_error("--queue", name)
        assert bool(error) == bool(refused), (name, error, refused)
        assert not error or error.split("--queue/-q: ", 1)[1] in refused, (error, refused)
    assert _cli_error("--queue", "").endswith("queue must not be empty")
    assert "queue is 256 characters long; the limit is 255" in _cli_error("--queue", "q" * 256)
    assert "must be at most 512" in _cli_error("--processes", "100000")
