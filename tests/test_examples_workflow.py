"""examples/workflow.py runs as written: a three-step workflow fails at its second step, its
on_failure task reports it, a resume finishes it with progress from the third step and a typed
result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .helpers import ROOT, query


def test_workflow_example_runs(database_url: str, schema: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYREX_LIKE_")}
    env.update(HYREX_LIKE_DATABASE_URL=database_url, HYREX_LIKE_SCHEMA=schema)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "workflow.py")],
        cwd=tmp_path,  # its worker log goes to ./.hyrex_like/
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    log = tmp_path / ".hyrex_like" / "workflow-worker.log"
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nworker log:\n" + (
        log.read_text() if log.exists() else "(none)"
    )
    assert proc.returncode == 0, detail
    out = proc.stdout
    assert f"schema {schema}" in out, detail
    assert "workflow failed at step clean" in out, detail
    assert "step clean: failed: ConnectionError: calibration service unavailable" in out, detail
    assert "on_failure: workflow nightly_readings failed at step clean: ConnectionError" in out
    assert "resumed (it was failed)" in out, detail
    progress = [
        (int(done), int(total))
        for done, total in re.findall(r"progress of summarize: (\d+)/(\d+)", out)
    ]
    assert progress, detail
    assert all(0 < done <= total for done, total in progress), progress
    assert [d for d, _ in progress] == sorted({d for d, _ in progress}), progress  # increasing
    assert "workflow completed" in out, detail
    assert "step clean: completed, 2 attempt(s)" in out, detail
    assert "result: Report(batch_id='2026-11-30', count=360, mean=48.883, dropped=40)" in out
    assert "worker exit code 0" in out, detail

    # what the database holds agrees: each step's body completed once (clean: one failed run,
    # one completed), and the on_failure task ran once
    runs = query(
        database_url,
        schema,
        "SELECT t.task_name, r.status, count(*) FROM task_run AS r JOIN task AS t "
        "ON t.id = r.task_id GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert runs == [
        ("alert", "completed", 1),
        ("clean", "completed", 1),
        ("clean", "failed", 1),
        ("fetch", "completed", 1),
        ("summarize", "completed", 1),
    ], runs
