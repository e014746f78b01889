"""``hy.worker(...)``: a worker started from code, in real processes, stopped by a signal or by
``Worker.stop``; its options checked at once."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys

import pytest

from hyrex_like import ConfigurationError, HyrexRegistry, WorkerError
from hyrex_like.dispatcher import WorkerOptions

from .helpers import ROOT, count, wait_until

APP = """
from hyrex_like import HyrexRegistry

hy = HyrexRegistry({url!r}, schema={schema!r})


@hy.task
def add(n: int) -> int:
    return n + 1
"""

MAIN_THREAD = (
    APP
    + """

if __name__ == "__main__":
    import signal
    import sys

    import structlog

    handles = [add.send(i) for i in range(5)]
    if {close_first}:
        hy.close()  # nothing open: the executors are forked, not spawned
    print(" ".join(str(h.id) for h in handles), flush=True)
    code = hy.worker(processes=1, grace_period=5, **{log_options}).run()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "handlers not restored"
    print("configured" if structlog.is_configured() else "unconfigured", flush=True)
    print("exit", code, flush=True)
    sys.exit(code)
"""
)

BACKGROUND_THREAD = """
import threading

from app_module import add, hy


def main() -> None:
    handles = [add.send(i) for i in range(5)]
    w = hy.worker(processes=1, grace_period=5)
    assert w.app == "app_module:hy", w.app
    codes = []
    thread = threading.Thread(target=lambda: codes.append(w.run()))
    thread.start()
    results = [h.wait(timeout=60).result for h in handles]
    w.stop()
    thread.join(60)
    assert not thread.is_alive(), "run() did not return after stop()"
    assert not w.running

    with hy.worker(processes=1) as again:  # start() on a thread, stop() and join() on exit
        assert add.send(41).wait(timeout=60).result == 42
    assert not again.running
    assert again.join() == 0
    print(results, codes, flush=True)


if __name__ == "__main__":  # spawned executors run this file again, as __mp_main__
    main()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(
    ("close_first", "log_options"),
    [(False, {}), (True, {"log_format": "json"})],
    ids=["spawned-quiet", "forked-logging"],
)
def test_a_worker_run_in_the_main_thread_stops_on_sigterm_with_exit_code_0(
    database_url, schema, tmp_path, close_first, log_options
):
    script = tmp_path / "main_app.py"
    script.write_text(
        MAIN_THREAD.format(
            url=database_url, schema=schema, close_first=close_first, log_options=log_options
        )
    )
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_env(),
            cwd=str(tmp_path),
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        ids = proc.stdout.readline().split()
        assert len(ids) == 5, stderr_path.read_text()
        wait_until(
            lambda: count(database_url, schema, "status = 'completed'") == 5,
            60,
            what="the 5 tasks to complete",
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    log = stderr_path.read_text()
    assert proc.returncode == 0, log
    assert out.split("\n")[-2] == "exit 0", (out, log)
    assert "Traceback" not in log
    if log_options:  # asked for: configured in the caller's process, as the CLI does
        assert "configured" in out.split()
        assert '"event": "worker_started"' in log
    else:  # not asked for: the library configures nothing, info events stay silent
        assert "unconfigured" in out.split()
        assert "worker_started" not in log
    assert count(database_url, schema, "status = 'completed'") == 5


def test_a_worker_run_on_a_thread_returns_0_after_stop(database_url, schema, tmp_path):
    (tmp_path / "app_module.py").write_text(APP.format(url=database_url, schema=schema))
    script = tmp_path / "thread_main.py"
    script.write_text(BACKGROUND_THREAD)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 2, 3, 4, 5] [0]", proc.stderr
    assert count(database_url, schema, "status = 'completed'") == 6


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"processes": 0}, "processes"),
        ({"processes": 100_000}, "processes"),
        ({"prefetch": 0}, "prefetch"),
        ({"grace_period": -1}, "grace_period"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"stale_after": 1, "heartbeat_interval": 2}, "stale_after"),
        ({"queues": ["ok", ""]}, "queue"),
        ({"queues": "emails"}, "queues=['emails']"),
        ({"log_level": "loud"}, "log_level"),
        ({"log_format": "xml"}, "log_format"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_a_bad_option_is_a_one_line_configuration_error_naming_it(registry, options, named):
    with pytest.raises(ConfigurationError) as info:
        registry.worker(**options)
    message = str(info.value)
    assert named in message
    assert "\n" not in message
    assert info.value.__cause__ is None  # no pydantic ValidationError in the traceback
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_every_worker_option_is_a_keyword_of_registry_worker():
    params = inspect.signature(HyrexRegistry.worker).parameters
    for name in WorkerOptions.model_fields:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default is None, name  # the default stays WorkerOptions'


def test_the_app_path_is_found_or_asked_for(registry, app_registry):
    from .apps import basic_app

    app_registry(basic_app.hy)
    assert basic_app.hy.worker(processes=1).app == "tests.apps.basic_app:hy"
    given = basic_app.hy.worker(processes=1, app="tests.apps.basic_app:hy")
    assert given.app == "tests.apps.basic_app:hy"
    # a registry no module holds: the executors could not import it
    with pytest.raises(WorkerError, match="app='module:attribute'"):
        registry.worker(processes=1)
    with pytest.raises(WorkerError, match="another registry"):
        registry.worker(app="tests.apps.basic_app:hy")


def test_a_registry_in_a_main_with_no_file_is_refused_with_the_way_out(database_url, schema):
    code = APP.format(url=database_url, schema=schema) + "\nhy.worker(processes=1)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 1
    assert "WorkerError" in proc.stderr
    assert "pass app='module:attribute'" in proc.stderr


def test_stop_when_not_running_does_nothing(app_registry):
    from .apps import basic_app

    app_registry(basic_app.hy)
    w = basic_app.hy.worker(processes=1)
    w.stop()
    assert not w.running
    with pytest.raises(WorkerError, match="start"):
        w.join()
