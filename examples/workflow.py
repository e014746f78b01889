"""hyrex-like workflow example: a three-step workflow that fails, is resumed, reports progress
and ends with a typed result.

python examples/workflow.py        # embedded PostgreSQL under the project's .hyrex_like/
HYREX_LIKE_DATABASE_URL=postgresql://... python examples/workflow.py

It sends one run of ``nightly_readings`` (fetch -> clean -> summarize, in workflow_app.py),
starts a worker, and shows: the run failing at ``clean`` (no retries), the ``on_failure`` task
reporting it, a resume that queues ``clean`` again with the same arguments, the progress
``summarize`` reports, and the final `Report`. Exit code 0 when all of that happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workflow_app  # noqa: E402  (the app module the worker imports too)


def start_worker(url: str, schema: str) -> subprocess.Popen[bytes]:
    log_path = Path(".hyrex_like") / "workflow-worker.log"
    log_path.parent.mkdir(exist_ok=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyrex_like",
            "run-worker",
            "workflow_app:hy",
            "--database-url",
            url,
            "--schema",
            schema,
            "--processes",
            "2",
        ],
        env=env,
        cwd=HERE,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    print(f"worker started (pid {worker.pid}); its log: {log_path}")
    return worker


def follow(run: Any, timeout: float = 120.0) -> None:
    """Wait for the run to be done, printing each new progress value of its current step."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while not run.refresh().done:
        if run.progress is not None and run.progress != last:
            last = run.progress
            print(f"  progress of {run.current_step}: {last['done']}/{last['total']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workflow {run.id} still {run.status} after {timeout}s")
        time.sleep(0.05)


def main() -> int:
    # the script reads only this run's handle, so reruns in the same schema are fine
    schema = os.environ.get("HYREX_LIKE_SCHEMA") or "hyrex_like_workflow_demo"
    hy = workflow_app.hy
    hy.configure(schema_name=schema)
    settings = hy.settings
    where = "configured URL" if settings.database_url else f"embedded, {settings.embedded_dir}"
    print(f"database: {where}, schema {schema}")

    run = workflow_app.pipeline.send(workflow_app.Batch(batch_id="2026-11-30", size=400))
    print(f"sent workflow {run.name} ({run.id}): {run.status}")
    worker = start_worker(hy.store.url(), schema)
    try:
        follow(run)
        print(f"workflow {run.status} at step {run.current_step}")
        failed = run.steps[1]
        error = failed.handle.last_error if failed.handle else None
        if error is not None:
            print(f"  step {failed.name}: {failed.status}: {error['type']}: {error['message']}")
        alert = run.on_failure_task
        if alert is not None:
            print(f"  on_failure: {alert.wait(timeout=60).result}")

        was = run.resume()
        print(f"resumed (it was {was}): {run.status} at step {run.current_step}")
        follow(run)
        print(f"workflow {run.status}")
        for s in run.steps:
            attempts = s.handle.attempt_count if s.handle else 0
            print(f"  step {s.name}: {s.status}, {attempts} attempt(s)")
        report = run.result  # a workflow_app.Report, typed by the workflow's definition
        print(f"result: {report!r}")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    hy.close()
    ok = (
        run.status == "completed"
        and isinstance(report, workflow_app.Report)
        and was == "failed"
        and code == 0
    )
    print(f"worker exit code {code}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
