"""`hyrex-like run-worker`: options, and one-line errors for apps it cannot load."""

from __future__ import annotations

import contextlib
import io
from importlib import metadata

import pydantic
import pytest

from hyrex_like import cli
from hyrex_like.dispatcher import WorkerOptions

from .helpers import done, read_events, run_cli


def test_run_worker_help_documents_every_option(database_url, schema):
    proc = run_cli("run-worker", "--help", database_url=database_url, schema=schema)
    assert proc.returncode == 0, proc.stderr
    assert "module:attribute" in proc.stdout
    # the option descriptions, after the usage line; argparse wraps lines
    text = " ".join(proc.stdout.split("options:", 1)[1].split())
    for option, words in [
        ("--queue", ["repeatable", "every queue"]),
        ("--processes", ["CPU count"]),
        ("--database-url", ["HYREX_LIKE_DATABASE_URL"]),
        ("--log-level", ["debug", "info", "warning", "error"]),
        ("--log-format", ["json", "console"]),
        ("--grace-period", ["SIGTERM", "seconds"]),
        ("--stale-after", ["heartbeat"]),
    ]:
        assert option in text, option
        after = text.split(option, 1)[1][:300]
        for word in words:
            assert word in after, f"{option} help does not mention {word!r}: {after!r}"


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_such_module_xyz:hy", "no_such_module_xyz"),
        ("no_such_module_xyz:hy", "working directory"),
        ("no_such_module_xyz:hy", "PYTHONPATH"),
        ("missing_dependency_app:hy", "No module named 'hyrex_like_missing_dependency_xyz'"),
        ("worker_app.py", "did you mean `worker_app:hy`?"),
        ("./worker_app.py", "did you mean `worker_app:hy`?"),
        ("worker_app.py:hy", "did you mean `worker_app:hy`?"),
        ("two_registries_app.py", "`two_registries_app:first` or `two_registries_app:second`"),
        ("no_such_file_xyz.py", "did you mean `no_such_file_xyz:<attribute>`?"),
        ("worker_app:no_such_attribute", "no_such_attribute"),
        ("worker_app:record", "not a HyrexRegistry"),
        ("no_registry_app", "holds 0 HyrexRegistry"),
        ("two_registries_app", "holds 2 HyrexRegistry"),
        ("broken_app:hy", "broken_app refuses to import"),
        (":hy", "bad app path"),
    ],
)
def test_run_worker_bad_app_is_a_one_line_error_with_exit_code_2(
    database_url, schema, app, expected
):
    proc = run_cli(
        "run-worker", app, "--processes", "1", database_url=database_url, schema=schema, timeout=30
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hyrex-like: error:"), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--processes", "0"],
        ["--processes", "many"],
        ["--grace-period", "-1"],
        ["--log-format", "xml"],
        ["--log-level", "loud"],
        ["--prefetch", "0"],
        ["--processes", "100000"],
        ["--prefetch", "10001"],
        ["--grace-period", "inf"],
        ["--poll-interval", "0"],
        ["--stale-after", "1", "--heartbeat-interval", "2"],
        ["--queue", ""],
        ["--queue", "q" * 256],
        ["--queue", "tab\there"],  # argv cannot hold a NUL; any control character is refused
    ],
    ids=lambda a: " ".join(a)[:40],
)
def test_run_worker_bad_option_exits_2_without_traceback(database_url, schema, args):
    proc = run_cli(
        "run-worker", "worker_app:hy", *args, database_url=database_url, schema=schema, timeout=30
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    # argparse's usage, then one line naming the option
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert args[0] in errors[0]
    assert "worker_started" not in proc.stderr


def _model_accepts(field: str, value: float, others: dict[str, float]) -> bool:
    try:
        WorkerOptions(**{field: value, **others})
    except pydantic.ValidationError:
        return False
    return True


def _cli_accepts(flag: str, text: str) -> bool:
    parser = cli._parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(["run-worker", "app:hy", flag, text])
    except SystemExit:
        return False
    return True


def test_every_numeric_worker_option_has_a_flag_with_the_models_bounds():
    """The CLI refuses exactly what WorkerOptions refuses, value by value around each bound."""
    fields = WorkerOptions.model_fields
    numeric = {name for name, f in fields.items() if f.annotation in (int, float, int | None)}
    assert set(cli._NUMERIC_FLAGS.values()) == numeric
    # the heartbeat rule spans two options: keep the other one out of its way
    others = {
        "stale_after": {"heartbeat_interval": 1e-9},
        "heartbeat_interval": {"stale_after": 1e12},
    }
    for flag, field in cli._NUMERIC_FLAGS.items():
        whole = fields[field].annotation in (int, int | None)
        bounds = [
            float(getattr(b, attr))
            for b in fields[field].metadata
            for attr in ("ge", "gt", "le", "lt")
            if hasattr(b, attr)
        ]
        assert bounds, field
        candidates = {v + d for v in bounds for d in (-1, -0.5, 0, 0.5, 1)} | {1e9, -1e9}
        for value in sorted(candidates):
            if whole and value != int(value):
                continue
            text = str(int(value)) if whole else repr(value)
            expected = _model_accepts(field, value, others.get(field, {}))
            assert _cli_accepts(flag, text) == expected, (flag, text, expected)


def test_worker_options_refuse_a_queue_name_a_task_could_not_have():
    for bad in ("", " ", "q" * 256, "nul\x00here", "lone\ud800"):
        with pytest.raises(pydantic.ValidationError, match="queue"):
            WorkerOptions(queues=(bad,))
    assert WorkerOptions(queues=("alpha", "é" * 255)).queues == ("alpha", "é" * 255)


def test_version_prints_the_installed_version(database_url, schema):
    proc = run_cli("--version", database_url=database_url, schema=schema)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hyrex-like {metadata.version('hyrex-like')}"


def test_run_worker_accepts_a_module_holding_one_registry(
    app_registry, worker, database_url, schema
):
    from .apps import single_registry_app

    app_registry(single_registry_app.registry)
    handle = single_registry_app.triple.send(14)
    w = worker("single_registry_app", "--processes", "1")
    assert done(handle, 30).status == "completed"
    assert handle.result == 42
    assert w.stop() == 0


def test_run_worker_serves_only_the_queues_given_with_repeatable_queue_option(
    wapp, app_worker, out_dir, database_url, schema
):
    alpha = wapp.on_alpha.send({"n": 1})
    beta = wapp.on_beta.send({"n": 2})
    gamma = wapp.on_gamma.send({"n": 3})
    w = app_worker("--queue", "alpha", "--queue", "gamma", "--processes", "1")
    assert done(alpha, 30).status == "completed"
    assert done(gamma, 30).status == "completed"
    # a worker claims everything it can in one statement, so beta had its chance
    beta.refresh()
    assert (beta.status, beta.attempt_count, beta.task_runs) == ("queued", 0, [])
    assert w.stop() == 0
    beta.refresh()
    assert beta.status == "queued"
    assert sorted(e["kind"] for e in read_events(out_dir)) == ["alpha", "gamma"]


def test_the_default_processes_is_the_cpu_count_capped_at_what_the_worker_accepts():
    """With no --processes, a machine with more CPUs than a worker may run executors (512)
    starts the most it may, instead of refusing its own default."""
    import os

    from hyrex_like.dispatcher import MAX_PROCESSES, default_processes

    [high] = [b.le for b in WorkerOptions.model_fields["processes"].metadata if hasattr(b, "le")]
    assert high == MAX_PROCESSES == 512
    for cpus, expected in [(None, 1), (1, 1), (8, 8), (512, 512), (513, 512), (4096, 512)]:
        assert default_processes(lambda cpus=cpus: cpus) == expected, cpus
        assert WorkerOptions(processes=default_processes(lambda cpus=cpus: cpus))
    assert default_processes() == min(os.cpu_count() or 1, 512)
    assert WorkerOptions().processes == default_processes()
    assert cli._parser().parse_args(["run-worker", "app:hy"]).processes == default_processes()
