"""Issue #16's durable hand-off under chaos: 500 three-step workflows through executor and
worker SIGKILLs, backend kills and PostgreSQL restarts all end SUCCESS, every step's body
completed exactly once (chaos/workflow_chaos.py; about 80 s on two cores).

It starts its own throwaway PostgreSQL cluster, so it needs the server binaries (the system's
PostgreSQL 15 or the pgserver wheel) and root or a user that may run them; see docs/chaos.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import ROOT

RUNNER = ROOT / "chaos" / "workflow_chaos.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_500_workflows_survive_kills_and_restarts_each_step_completed_once(tmp_path):
    figures_path = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--figures-json", str(figures_path)],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    assert "OK: no violations" in proc.stdout
    figures = json.loads(figures_path.read_text())
    assert figures["violations"] == 0
    assert figures["workflows sent"] == "500"
    assert figures["workflows completed"] == "500"
    assert figures["not completed"] == "0"
    assert figures["wrong final result"] == "0"
    assert figures["step tasks"] == "1500"
    assert figures["steps completed exactly once"] == "1500"
    assert figures["steps begun before their predecessor returned"] == "0"
    assert figures["attempts executed twice"] == "0"
    assert figures["steps run by two executors at once"] == "0"
    # the chaos really happened: every kind of fault at least once
    for kind in ("executor_sigkill", "worker_sigkill", "backends_terminated", "postgres_restart"):
        assert int(figures[f"chaos: {kind}"]) >= 1, kind
