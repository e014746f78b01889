"""The chaos runner's short version (about 2,000 tasks, about a minute) must find no violation.

It starts its own throwaway PostgreSQL cluster, so it needs the server binaries (the system's
PostgreSQL 15 or the pgserver wheel) and root or a user that may run them; see docs/chaos.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import ROOT

RUNNER = ROOT / "chaos" / "run_chaos.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_chaos_run_loses_nothing_and_never_runs_a_task_twice_at_once(tmp_path):
    figures_path = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--figures-json", str(figures_path)],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    assert "OK: no violations" in proc.stdout
    figures = json.loads(figures_path.read_text())
    assert figures["violations"] == 0
    assert figures["lost"] == "0"
    assert figures["tasks run by two executors at once"] == "0"
    assert figures["attempts executed twice"] == "0"
    assert figures["tasks sent"] == "2000"
    finished = ("completed", "failed after retries", "canceled")
    assert sum(int(figures[name]) for name in finished) == 2000
    assert figures["started before due"] == "0" and int(figures["delayed sends"]) > 0
    # the chaos really happened: every kind of fault at least once
    for kind in (
        "executor_sigkill",
        "worker_sigkill",
        "backends_terminated",
        "postgres_restart",
        "worker_sigterm",
        "cancel",
    ):
        assert int(figures[f"chaos: {kind}"]) >= 1, kind
