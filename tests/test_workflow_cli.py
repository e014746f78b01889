"""``hyrex-like workflows list|show|pause|resume|cancel`` against real workflows run by a real
worker: each state change is made by the command and then observed in the database."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hyrex_like import TaskStatus, WorkflowStatus

from .helpers import APPS, ROOT, Worker, query, run_cli, wait_until

APP = '''
"""A three-step workflow whose middle step runs until a gate file appears (or fails when a
fail file is there), reporting progress meanwhile and noting each start."""

import os
import time
from pathlib import Path

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()
OUT = Path(os.environ.get("WF_CLI_OUT", "."))


@hy.task(max_retries=0)
def prepare(n: int) -> int:
    return n + 1


@hy.task(max_retries=0)
def slow(n: int) -> int:
    ctx = get_hyrex_context()
    assert ctx is not None
    with open(OUT / "starts", "a") as f:
        f.write(f"{os.getpid()} {ctx.attempt_number} start\\n")
    ticks = 0
    while not (OUT / "gate").exists():
        ticks += 1
        ctx.update_progress({"ticks": ticks})
        time.sleep(0.02)
    with open(OUT / "starts", "a") as f:
        f.write(f"{os.getpid()} {ctx.attempt_number} end\\n")
    if (OUT / "fail").exists():
        raise RuntimeError("told to fail")
    return n * 10


@hy.task(max_retries=0)
def finish(n: int) -> str:
    return f"done {n}"


flow = hy.workflow("cli_flow", [prepare, slow, finish])
'''


class Env:
    """The test's app module (for sending), its output directory and a CLI runner."""

    def __init__(self, module: ModuleType, out: Path, database_url: str, schema: str) -> None:
        self.app = module
        self.out = out
        self.database_url = database_url
        self.schema = schema

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("workflows", *args, database_url=self.database_url, schema=self.schema)

    def starts(self) -> list[str]:
        path = self.out / "starts"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def env(
    database_url: str, schema: str, tmp_path: Path, worker: Callable[..., Worker]
) -> Iterator[Env]:
    out = tmp_path / "out"
    out.mkdir()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    name = "wf_cli_app_" + uuid.uuid4().hex[:8]
    (app_dir / f"{name}.py").write_text(APP)
    spec = importlib.util.spec_from_file_location(name, app_dir / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.hy.configure(database_url=database_url, schema_name=schema)
    path = os.pathsep.join([str(app_dir), str(APPS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    worker(f"{name}:hy", "--processes", "2", env={"PYTHONPATH": path, "WF_CLI_OUT": str(out)})
    yield Env(module, out, database_url, schema)
    module.hy.close()


def _slow_running(run: Any) -> bool:
    run.refresh()
    step = run.steps[1]
    return bool(step.status is TaskStatus.RUNNING and step.progress)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyrex-like: error: "), proc.stderr
    return lines[0]


def test_pause_then_resume_a_running_step(env: Env) -> None:
    run = env.app.flow.send(4)
    wait_until(lambda: _slow_running(run), what="step slow running with progress")

    listed = env.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["status"], r["current_step"]) for r in rows] == [
        (str(run.id), "cli_flow", "running", "slow")
    ]
    assert rows[0]["finished_at"] is None and rows[0]["created_at"]

    shown = env.cli("show", str(run.id))
    assert shown.returncode == 0, shown.stderr
    assert "status       : running at step slow" in shown.stdout
    lines = {line.split()[1]: line.split() for line in shown.stdout.splitlines()[6:]}
    assert lines["prepare"][3:5] == ["completed", "1"], shown.stdout
    assert lines["slow"][3:5] == ["running", "1"] and '{"ticks":' in shown.stdout, shown.stdout
    assert lines["finish"][3:5] == ["not", "started"], shown.stdout

    paused = env.cli("pause", str(run.id))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == (
        f"workflow cli_flow ({run.id}) paused at step slow; "
        "stop requested for running step(s): slow"
    )
    # the worker stops the step: it ends paused, its run interrupted by the pause, not counted
    wait_until(lambda: run.refresh().steps[1].status is TaskStatus.PAUSED, 15, what="slow paused")
    assert run.status is WorkflowStatus.PAUSED
    runs = query(
        env.database_url,
        env.schema,
        "SELECT r.status, r.error_type FROM task_run AS r JOIN task AS t ON t.id = r.task_id "
        "WHERE t.task_name = 'slow'",
    )
    assert runs == [("interrupted", "WorkflowPaused")], runs

    again = env.cli("pause", str(run.id))
    assert again.returncode == 1 and "is already paused, nothing changed" in again.stdout

    shown_json = json.loads(env.cli("show", str(run.id), "--json").stdout)
    assert shown_json["status"] == "paused" and shown_json["current_step"] == "slow"
    assert [s["status"] for s in shown_json["steps"]] == ["completed", "paused", None]
    assert shown_json["steps"][1]["progress"]["ticks"] > 0

    (env.out / "gate").touch()
    resumed = env.cli("resume", str(run.id))
    assert resumed.returncode == 0, resumed.stderr
    assert f"workflow cli_flow ({run.id}) resumed (it was paused)" in resumed.stdout
    wait_until(lambda: run.refresh().status is WorkflowStatus.COMPLETED, 30, what="completed")
    assert run.result == "done 50"
    # started twice (the pause stopped the first), never two at once
    starts = env.starts()
    assert [line.split()[2] for line in starts] == ["start", "start", "end"], starts

    finished = json.loads(env.cli("list", "--json").stdout)
    assert finished[0]["status"] == "completed" and finished[0]["current_step"] is None
    assert finished[0]["finished_at"] is not None

    # a completed workflow: nothing to pause, resume or cancel
    for action, words in (
        ("pause", "it is completed"),
        ("resume", "it is completed; only a failed or paused workflow can be resumed"),
    ):
        refused = env.cli(action, str(run.id))
        assert refused.returncode == 1, (action, refused.stdout, refused.stderr)
        assert words in _one_line_error(refused), refused.stderr
    not_canceled = env.cli("cancel", str(run.id))
    assert not_canceled.returncode == 1
    assert "is already completed, nothing changed" in not_canceled.stdout


def test_cancel_a_running_workflow(env: Env) -> None:
    run = env.app.flow.send(1)
    wait_until(lambda: _slow_running(run), what="step slow running with progress")

    canceled = env.cli("cancel", str(run.id))
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() == (
        f"workflow cli_flow ({run.id}) canceled; stop requested for running step(s): slow"
    )
    wait_until(
        lambda: run.refresh().steps[1].status is TaskStatus.CANCELED, 15, what="slow canceled"
    )
    assert run.status is WorkflowStatus.CANCELED and run.steps[2].status is None
    assert [line.split()[2] for line in env.starts()] == ["start"]  # stopped, never ended

    table = env.cli("list")
    assert table.returncode == 0
    header, line = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "STATUS", "CURRENT"]
    assert line.split()[:4] == [str(run.id), "cli_flow", "canceled", "slow"]

    refused = env.cli("resume", str(run.id))
    assert refused.returncode == 1
    assert "cannot resume workflow cli_flow" in _one_line_error(refused)
    assert "it is canceled" in refused.stderr
    again = env.cli("cancel", str(run.id))
    assert again.returncode == 1 and "is already canceled, nothing changed" in again.stdout
    # the finish step was never queued: the workflow's tasks are prepare and slow only
    assert query(env.database_url, env.schema, "SELECT count(*) FROM task") == [(2,)]


def test_resume_a_failed_workflow(env: Env) -> None:
    (env.out / "gate").touch()
    (env.out / "fail").touch()
    run = env.app.flow.send(2)
    wait_until(lambda: run.refresh().status is WorkflowStatus.FAILED, 30, what="failed")

    shown = env.cli("show", str(run.id))
    assert shown.returncode == 0
    assert "status       : failed at step slow" in shown.stdout
    assert "RuntimeError: told to fail" in shown.stdout
    step = json.loads(env.cli("show", str(run.id), "--json").stdout)["steps"][1]
    assert step["status"] == "failed" and step["attempts"] == 1
    assert step["last_error"] == {"type": "RuntimeError", "message": "told to fail"}

    refused = env.cli("pause", str(run.id))
    assert refused.returncode == 1 and "it is failed" in _one_line_error(refused)

    (env.out / "fail").unlink()
    resumed = env.cli("resume", str(run.id))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed (it was failed)" in resumed.stdout
    wait_until(lambda: run.refresh().status is WorkflowStatus.COMPLETED, 30, what="completed")
    assert run.result == "done 30"
    final = json.loads(env.cli("show", str(run.id), "--json").stdout)
    assert [(s["status"], s["attempts"], s["last_error"]) for s in final["steps"]] == [
        ("completed", 1, None),
        ("completed", 2, None),
        ("completed", 1, None),
    ]


def test_list_filters_and_bad_ids(env: Env) -> None:
    empty = env.cli("list")
    assert empty.returncode == 0 and empty.stdout.strip() == "no workflow runs"
    (env.out / "gate").touch()
    runs = [env.app.flow.send(i) for i in range(3)]
    wait_until(
        lambda: all(r.refresh().status is WorkflowStatus.COMPLETED for r in runs),
        30,
        what="three workflows completed",
    )

    newest_two = json.loads(env.cli("list", "--limit", "2", "--json").stdout)
    assert [r["id"] for r in newest_two] == [str(r.id) for r in reversed(runs)][:2]
    assert json.loads(env.cli("list", "--name", "other", "--json").stdout) == []
    assert env.cli("list", "--name", "other").stdout.strip() == "no workflow runs of 'other'"

    unknown = uuid.uuid4()
    for action in ("show", "pause", "resume", "cancel"):
        missing = env.cli(action, str(unknown))
        assert missing.returncode == 2, (action, missing.stdout, missing.stderr)
        assert f"workflow {unknown} does not exist" in _one_line_error(missing)
        malformed = env.cli(action, "not-a-uuid")
        assert malformed.returncode == 2
        assert "'not-a-uuid' is not a workflow id" in malformed.stderr
    bad_limit = env.cli("list", "--limit", "0")
    assert bad_limit.returncode == 2 and "must be between 1 and 10000" in bad_limit.stderr
