"""Bad input: each case gets a clear, named error, and nothing is half-written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import psycopg
import pydantic
import pytest
from pydantic import BaseModel, ConfigDict

from hyrex_like import (
    MAX_NESTING_DEPTH,
    ConfigurationError,
    DatabaseError,
    HyrexRegistry,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    SchemaNotReady,
    Settings,
    TaskDefinitionError,
    TaskNotCompleted,
)

from .apps import bad_input_app, basic_app, hostile_results_app
from .helpers import APPS, ROOT, count, query, server_address, wait_until

HOSTILE = "'; DROP TABLE task; --"


class Point(BaseModel):
    x: int
    y: int


class AsStrings(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    value: float


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tables(database_url: str, schema: str) -> int:
    rows = query(
        database_url,
        schema,
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s",
        (schema,),
    )
    return int(rows[0][0])


# ------------------------------------------------------------------- task definitions


def test_untyped_parameter_is_rejected_naming_function_and_parameter(
    registry, database_url, schema
):
    registry.migrate()

    def resize(image):  # type: ignore[no-untyped-def]
        return image

    with pytest.raises(TypeError) as info:
        registry.task(resize)
    assert isinstance(info.value, TaskDefinitionError)
    assert "resize" in str(info.value) and "'image'" in str(info.value)
    assert "resize" not in registry.tasks
    assert count(database_url, schema) == 0


def test_star_args_task_is_rejected_naming_function_and_parameter(registry, database_url, schema):
    registry.migrate()

    def fan_out(*items: int) -> None:
        pass

    with pytest.raises(TaskDefinitionError, match=r"fan_out.*\*items"):
        registry.task(queue="q")(fan_out)
    assert registry.tasks == {}
    assert count(database_url, schema) == 0


# ------------------------------------------------------------------- payloads


def test_invalid_payload_raises_validation_error_and_writes_nothing(registry, database_url, schema):
    @registry.task
    def plot(p: Point) -> None:
        pass

    registry.migrate()
    with pytest.raises(pydantic.ValidationError) as info:
        plot.send({"x": 1, "y": "not a number"})
    assert "y" in str(info.value)
    # one bad payload in a batch: none of the batch is written
    with pytest.raises(pydantic.ValidationError):
        plot.send_many([{"x": 1, "y": 2}, {"x": 3}, {"x": 4, "y": 5}])
    assert count(database_url, schema) == 0
    plot.send({"x": 1, "y": 2})  # the registry still works
    assert count(database_url, schema) == 1


def test_payload_over_the_env_limit_raises_payload_too_large(database_url, schema):
    settings = Settings.from_env(
        {
            "HYREX_LIKE_DATABASE_URL": database_url,
            "HYREX_LIKE_SCHEMA": schema,
            "HYREX_LIKE_MAX_PAYLOAD_BYTES": "100",
        }
    )
    assert settings.max_payload_bytes == 100
    hy = HyrexRegistry(settings=settings)
    try:

        @hy.task
        def store_text(text: str) -> None:
            pass

        hy.migrate()
        store_text.send("a" * 90)  # 92 bytes as JSON: under the limit
        with pytest.raises(PayloadTooLarge) as info:
            store_text.send("a" * 200)
        message = str(info.value)
        assert "store_text" in message and "202 bytes" in message and "100" in message
        assert "HYREX_LIKE_MAX_PAYLOAD_BYTES" in message
        with pytest.raises(PayloadTooLarge):
            store_text.send_many(["small", "b" * 500])
        assert count(database_url, schema) == 1
    finally:
        hy.close()


def test_default_payload_limit_is_one_mebibyte(registry, database_url, schema):
    assert registry.settings.max_payload_bytes == 1_048_576

    @registry.task
    def blob(data: str) -> None:
        pass

    registry.migrate()
    with pytest.raises(PayloadTooLarge):
        blob.send("x" * (1_048_576 + 1))
    assert count(database_url, schema) == 0


def test_settings_max_payload_bytes_overrides_the_limit(database_url, schema):
    hy = HyrexRegistry(
        settings=Settings(database_url=database_url, schema_name=schema, max_payload_bytes=10)
    )
    try:

        @hy.task
        def tiny(n: int) -> None:
            pass

        hy.migrate()
        tiny.send(12345)
        with pytest.raises(PayloadTooLarge, match="limit is 10"):
            tiny.send(10**20)
        assert count(database_url, schema) == 1
    finally:
        hy.close()


def test_nul_in_a_json_string_says_postgres_cannot_store_it(registry, database_url, schema):
    @registry.task
    def note(data: dict[str, str]) -> None:
        pass

    registry.migrate()
    for payload in ({"text": "a\x00b"}, {"key\x00": "value"}):
        with pytest.raises(PayloadNotSerializable) as info:
            note.send(payload)
        assert "PostgreSQL" in str(info.value) and "NUL" in str(info.value)
    # a literal backslash-u-0000 text (no NUL character) is fine
    note.send({"text": "\\u0000"})
    rows = query(database_url, schema, "SELECT args->>'text' FROM task")
    assert rows == [("\\u0000",)]


# ------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [HOSTILE, "robert'); DELETE FROM task_run; --", 'q"uoted\\back%s%(x)s{}', "очередь-数据-🚀"],
)
def test_hostile_and_unicode_names_are_stored_verbatim(registry, database_url, schema, name):
    @registry.task(name=name, queue=name)
    def anything(n: int) -> None:
        pass

    handle = anything.send(1)
    rows = query(
        database_url, schema, "SELECT task_name, queue FROM task WHERE id = %s", (handle.id,)
    )
    assert rows == [(name, name)]
    assert handle.refresh().queue == name
    other = anything.with_config(queue=name + "-2").send(2)
    assert other.refresh().queue == name + "-2"
    # task, task_run, worker, schedule_tick, workflow, kv, queue, migrations
    assert _tables(database_url, schema) == 9
    assert count(database_url, schema) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 256, "256 characters long; the limit is 255"),
        ("nul\x00inside", "control character"),
        ("lone\udc80surrogate", "not valid Unicode text"),
    ],
)
def test_bad_queue_and_task_names_are_rejected_before_writing(
    registry, database_url, schema, bad, message
):
    registry.migrate()

    @registry.task
    def fine(n: int) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match=message):
        fine.with_config(queue=bad).send(1)
    with pytest.raises(InvalidTaskOption, match=message):
        registry.task(queue=bad)(lambda n: None)

    def named(n: int) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match=message):
        registry.task(name=bad)(named)
    assert set(registry.tasks) == {"fine"}
    assert count(database_url, schema) == 0


def test_names_of_exactly_255_characters_are_accepted(registry, database_url, schema):
    name = "é" * 255

    @registry.task(name=name, queue=name)
    def longest(n: int) -> None:
        pass

    longest.send(1)
    assert query(database_url, schema, "SELECT length(task_name), length(queue) FROM task") == [
        (255, 255)
    ]


# ------------------------------------------------------------------- with a real worker


def test_task_no_worker_knows_stays_queued_and_unclaimed(
    app_registry, registry, worker, database_url, schema
):
    @registry.task(name="not_in_basic_app")  # same queue ("default") as basic_app's tasks
    def orphan(n: int) -> None:
        pass

    unknown = orphan.send(7)
    app_registry(basic_app.hy)
    before = [basic_app.echo.send({"n": i}) for i in range(10)]
    w = worker("basic_app:hy", "--processes", "2", "--poll-interval", "0.1")
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") == 10,
        30,
        what="basic_app tasks to complete",
    )
    after = [basic_app.echo.send({"n": i}) for i in range(10, 15)]
    wait_until(
        lambda: count(database_url, schema, "status = 'completed'") == 15,
        30,
        what="tasks sent after the unknown one to complete",
    )
    rows = query(
        database_url,
        schema,
        "SELECT task_name, status, attempt_count, worker_id FROM task WHERE id = %s",
        (unknown.id,),
    )
    assert rows == [("not_in_basic_app", "queued", 0, None)]
    assert count(database_url, schema, f"task_id = '{unknown.id}'", table="task_run") == 0
    assert unknown.refresh().status == "queued"
    assert all(h.refresh().status == "completed" for h in before + after)
    assert w.proc.poll() is None
    assert w.stop() == 0
    assert unknown.refresh().status == "queued"


def test_stored_args_that_no_longer_validate_fail_once_without_retry(
    app_registry, worker, database_url, schema
):
    app_registry(bad_input_app.hy)
    broken = bad_input_app.strict.send({"n": 1})
    assert broken.refresh().row.max_retries == 3
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "UPDATE task SET args = %s::jsonb WHERE id = %s",
            ('{"n": "no longer a number"}', broken.id),
        )
    w = worker("bad_input_app:hy", "--processes", "1", "--poll-interval", "0.1")
    broken.wait(30)
    assert broken.status == "failed"
    assert broken.attempt_count == 1
    runs = broken.task_runs
    assert [(r.attempt_number, r.status, r.error_type) for r in runs] == [
        (1, "failed", "ValidationError")
    ]
    assert "n" in (runs[0].error_message or "") and "integer" in (runs[0].error_message or "")
    # the worker carries on
    later = [bad_input_app.ok.send({"n": i}) for i in range(5)]
    for h in later:
        assert h.wait(30).status == "completed"
    assert broken.refresh().attempt_count == 1  # still not retried
    assert w.proc.poll() is None
    assert w.stop() == 0


def test_unserializable_result_fails_the_attempt_without_retry(
    app_registry, worker, database_url, schema
):
    app_registry(bad_input_app.hy)
    with pytest.raises(PayloadNotSerializable, match="unjsonable.*cannot be stored as JSON"):
        bad_input_app.unjsonable.dump_result(object())
    h1 = bad_input_app.unjsonable.send({"n": 1})
    h2 = bad_input_app.nul_result.send({"n": 2})
    w = worker("bad_input_app:hy", "--processes", "1", "--poll-interval", "0.1")
    for h, needle in ((h1, "cannot be stored as JSON"), (h2, "NUL")):
        h.wait(30)
        assert h.status == "failed"
        with pytest.raises(TaskNotCompleted, match="failed after 1 attempt"):
            h.result  # noqa: B018
        runs = h.task_runs
        assert [(r.attempt_number, r.status, r.error_type) for r in runs] == [
            (1, "failed", "PayloadNotSerializable")
        ]
        assert needle in (runs[0].error_message or "")
    assert bad_input_app.ok.send({"n": 3}).wait(30).result == 3
    assert w.stop() == 0


# ------------------------------------------------------------------- the command line


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.pop("HYREX_LIKE_DATABASE_URL", None)
    full_env["HYREX_LIKE_NO_EMBEDDED"] = "1"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hyrex_like", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(APPS),
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "url",
    [
        "not a url at all",
        "postgresql://postgres@127.0.0.1:notaport/test",
        "postgresql://postgres@[::1/test",
    ],
)
def test_malformed_database_url_is_a_clear_error(url):
    for args in (("run-worker", "basic_app:hy", "--startup-timeout", "1"), ("init-db",)):
        proc = _cli(*args, "--database-url", url)
        assert proc.returncode == 2, proc.stderr
        assert "hyrex-like: error:" in proc.stderr
        assert url in proc.stderr  # names the URL it could not use (no password here)
        assert "Traceback" not in proc.stderr + proc.stdout


def test_unreachable_database_is_a_clear_error_within_the_startup_timeout():
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
    proc = _cli(
        "run-worker", "basic_app:hy", "--database-url", url, "--startup-timeout", "1", timeout=30
    )
    assert proc.returncode == 2, proc.stderr
    assert "hyrex-like: error:" in proc.stderr and "connect" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_schema_with_auto_migrate_off_says_how_to_migrate(database_url, schema):
    env = {"HYREX_LIKE_AUTO_MIGRATE": "false", "HYREX_LIKE_SCHEMA": schema}
    proc = _cli(
        "run-worker",
        "basic_app:hy",
        "--database-url",
        database_url,
        "--startup-timeout",
        "1",
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "hyrex-like init-db" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tables(database_url, schema) == 0  # the worker created nothing

    hy = HyrexRegistry(
        settings=Settings.from_env(
            {
                "HYREX_LIKE_DATABASE_URL": database_url,
                "HYREX_LIKE_SCHEMA": schema,
                "HYREX_LIKE_AUTO_MIGRATE": "false",
            }
        )
    )
    try:

        @hy.task
        def later(n: int) -> None:
            pass

        with pytest.raises(SchemaNotReady, match="hyrex-like init-db"):
            later.send(1)
        assert _tables(database_url, schema) == 0

        done = _cli("init-db", "--database-url", database_url, "--schema", schema)
        assert done.returncode == 0, done.stderr
        later.send(1)
        assert count(database_url, schema) == 1
    finally:
        hy.close()


@pytest.mark.parametrize("url", ["not a url at all", "postgresql://postgres@127.0.0.1:notaport/t"])
def test_malformed_url_in_the_library_is_a_configuration_error(schema, url):
    hy = HyrexRegistry(url, schema=schema)

    @hy.task
    def t(n: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="invalid database URL"):
        t.send(1)


def test_unreachable_url_in_the_library_is_a_database_error(schema):
    hy = HyrexRegistry(f"postgresql://postgres@127.0.0.1:{_free_port()}/test", schema=schema)

    @hy.task
    def u(n: int) -> None:
        pass

    with pytest.raises(DatabaseError, match="cannot connect"):
        u.send(1)


class _LateProxy:
    """A TCP forwarder to the real server that starts listening only when told to."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket
        import threading

        self.port = _free_port()
        self.target_host = target_host
        self.target_port = target_port
        self._socket = socket
        self._threading = threading
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = self._socket.create_server(("127.0.0.1", self.port))
        self._server = server
        self._threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = self._socket.create_connection((self.target_host, self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def test_worker_waits_for_a_late_database_within_the_startup_timeout(
    app_registry, worker, database_url, schema
):
    from psycopg import conninfo

    app_registry(basic_app.hy).migrate()
    handle = basic_app.echo.send({"n": 41})
    proxy = _LateProxy(*server_address(database_url))  # never a default host or port
    late_url = conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
    try:
        w = worker(
            "basic_app:hy",
            "--processes",
            "1",
            "--startup-timeout",
            "30",
            env={"HYREX_LIKE_DATABASE_URL": late_url},
        )
        wait_until(
            lambda: "database_unavailable" in w.log() or w.proc.poll() is not None,
            30,
            what="the worker to try the database and fail",
        )
        proxy.start()
        assert handle.wait(30).status == "completed", w.log()
        assert w.stop() == 0
    finally:
        proxy.close()


# ------------------------------------------------------------------- what JSON cannot hold
# Refused at send, naming the task and where the value is, with nothing written: stored, each
# would have come back changed (null, U+FFFD) or not at all (too deep for the worker's parser).


class Reading(BaseModel):
    value: float
    extra: dict[str, Any] = {}


def _nested(depth: int) -> dict[str, Any]:
    return hostile_results_app.nested(depth)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_at_send_naming_task_and_path(
    registry, database_url, schema, number
):
    @registry.task
    def record(reading: Reading) -> None:
        pass

    @registry.task
    def loose(data: dict[str, Any]) -> None:
        pass

    @registry.task
    def series(values: list[float]) -> None:
        pass

    registry.migrate()
    cases = [
        (record, {"value": number}, "$.value"),
        (record, Reading(value=1.0, extra={"deep": [1, {"x": number}]}), "$.extra.deep[1].x"),
        (loose, {"a b": number}, "$['a b']"),
        (series, [1.0, 2.0, number], "$[2]"),
    ]
    for task, payload, path in cases:
        with pytest.raises(PayloadNotSerializable) as info:
            task.send(payload)
        message = str(info.value)
        assert f"payload for task {task.name} " in message, message
        assert f"{path} is {number!r}" in message and "JSON cannot hold" in message, message
    assert count(database_url, schema) == 0
    # the words themselves, as text, are data like any other
    loose.send({"NaN": "NaN", "Infinity": "-Infinity"})
    assert query(database_url, schema, "SELECT args FROM task") == [
        ({"NaN": "NaN", "Infinity": "-Infinity"},)
    ]


def test_a_model_that_chose_to_write_nan_as_strings_keeps_its_choice(
    registry, database_url, schema
):
    @registry.task
    def measure(m: AsStrings) -> None:
        pass

    handle = measure.send(AsStrings(value=math.nan))
    rows = query(database_url, schema, "SELECT args FROM task WHERE id = %s", (handle.id,))
    assert rows == [({"value": "NaN"},)]
    assert math.isnan(measure.load_payload('{"value": "NaN"}').value)


def test_lone_surrogate_in_a_dict_key_is_refused_like_in_a_value(registry, database_url, schema):
    @registry.task
    def labels(data: dict[str, int]) -> None:
        pass

    @registry.task
    def nested_labels(reading: Reading) -> None:
        pass

    registry.migrate()
    with pytest.raises(PayloadNotSerializable) as info:
        labels.send({"ok": 1, "k\udc80": 2})
    message = str(info.value)
    assert "payload for task labels" in message
    assert "'k\\udc80' at $ holds a lone surrogate" in message
    with pytest.raises(PayloadNotSerializable, match=r"'\\ud800' at \$\.extra\.inner holds a lone"):
        nested_labels.send({"value": 1, "extra": {"inner": {"\ud800": 1}}})
    with pytest.raises(PayloadNotSerializable, match=r"the text at \$\.extra\.v\[1\] holds a lone"):
        nested_labels.send({"value": 1, "extra": {"v": ["ok", "\ud800"]}})
    assert count(database_url, schema) == 0
    # a real U+FFFD is text like any other, stored as sent
    labels.send({"\ufffd": 1})
    assert query(database_url, schema, "SELECT args FROM task") == [({"\ufffd": 1},)]


def test_nesting_is_refused_at_send_exactly_past_what_a_worker_can_load(
    registry, database_url, schema
):
    @registry.task
    def tree(data: dict[str, Any]) -> None:
        pass

    @registry.task
    def wrapped(reading: Reading) -> None:
        pass

    handle = tree.send(_nested(MAX_NESTING_DEPTH))
    [(stored,)] = query(
        database_url, schema, "SELECT args::text FROM task WHERE id = %s", [handle.id]
    )
    assert tree.load_payload(stored) == _nested(MAX_NESTING_DEPTH)  # the worker's loader
    too_deep = json.dumps(_nested(MAX_NESTING_DEPTH + 1))
    with pytest.raises(pydantic.ValidationError, match="recursion limit"):
        tree.load_payload(too_deep)  # why the limit: one level more, no worker could load it
    for depth in (MAX_NESTING_DEPTH + 1, 256, 300):
        with pytest.raises(PayloadNotSerializable) as info:
            tree.send(_nested(depth))
        message = str(info.value)
        assert "payload for task tree" in message and "MAX_NESTING_DEPTH" in message, message
        assert str(MAX_NESTING_DEPTH) in message
    assert f"nested {MAX_NESTING_DEPTH + 1} levels deep" in str(
        pytest.raises(PayloadNotSerializable, tree.send, _nested(MAX_NESTING_DEPTH + 1)).value
    )
    # the model's own level counts too
    wrapped.send({"value": 1, "extra": _nested(MAX_NESTING_DEPTH - 1)})
    with pytest.raises(PayloadNotSerializable, match="MAX_NESTING_DEPTH"):
        wrapped.send({"value": 1, "extra": _nested(MAX_NESTING_DEPTH)})
    assert count(database_url, schema) == 2


def _leaf_in_dicts(containers: int) -> dict[str, Any]:
    """``{"a": {"a": ... {"leaf": 1}}}``: the number 1 inside ``containers`` dicts."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(containers - 1):
        value = {"a": value}
    return value


def _leaf_in_lists(containers: int) -> list[Any]:
    """``[[...[1]...]]``: the number 1 inside ``containers`` lists."""
    value: list[Any] = [1]
    for _ in range(containers - 1):
        value = [value]
    return value


@pytest.mark.parametrize("shape", [_leaf_in_dicts, _leaf_in_lists])
def test_nesting_with_a_value_innermost_is_refused_exactly_past_what_a_worker_can_load(
    registry, database_url, schema, shape
):
    """A value innermost sits one level below its container: the parser's limit counts it, so
    such a payload holds one container fewer than one whose innermost container is empty."""

    @registry.task
    def tree(data: Any) -> None:
        pass

    deepest = shape(MAX_NESTING_DEPTH - 1)  # the number at level MAX_NESTING_DEPTH
    handle = tree.send(deepest)
    [(stored,)] = query(
        database_url, schema, "SELECT args::text FROM task WHERE id = %s", [handle.id]
    )
    assert tree.load_payload(stored) == deepest  # the worker's loader reads it
    too_deep = shape(MAX_NESTING_DEPTH)
    with pytest.raises(pydantic.ValidationError, match="recursion limit"):
        tree.load_payload(json.dumps(too_deep))  # one level more: no worker could load it
    with pytest.raises(PayloadNotSerializable) as info:
        tree.send(too_deep)
    message = str(info.value)
    assert f"nested {MAX_NESTING_DEPTH + 1} levels deep" in message, message
    assert f"MAX_NESTING_DEPTH ({MAX_NESTING_DEPTH})" in message, message
    assert count(database_url, schema) == 1
    # a result: the same rule
    result = hostile_results_app.hy.tasks["deepest"]
    assert json.loads(result.dump_result({"v": shape(MAX_NESTING_DEPTH - 2)})) == {
        "v": shape(MAX_NESTING_DEPTH - 2)
    }
    with pytest.raises(PayloadNotSerializable, match="MAX_NESTING_DEPTH"):
        result.dump_result({"v": shape(MAX_NESTING_DEPTH - 1)})


def test_the_words_nan_and_infinity_inside_strings_are_stored_as_sent(
    registry, database_url, schema
):
    @registry.task
    def film(data: dict[str, Any]) -> None:
        pass

    texts = ["Infinity War", "NaN", "-Infinity", "a,NaN", "[Infinity", "x:-Infinity", '{"a":NaN}']
    payload = {"titles": texts, "NaN": {"Infinity": "NaN"}, "n": 1.5}
    handle = film.send(payload)
    [(stored,)] = query(database_url, schema, "SELECT args FROM task WHERE id = %s", [handle.id])
    assert stored == payload
    for number in (math.nan, math.inf, -math.inf):
        with pytest.raises(PayloadNotSerializable, match=r"\$\.titles\[1\] is"):
            film.send({"titles": ["Infinity War", number]})
    assert count(database_url, schema) == 1


def test_the_non_finite_search_runs_only_where_a_dump_puts_a_number():
    """The words in strings skip the parse in the common case; every real constant is found."""
    from hyrex_like.payloads import _JSON_NON_FINITE

    for text in [b'{"title":"Infinity War"}', b'["NaN is not a number"]', b'"Infinity"']:
        assert _JSON_NON_FINITE.search(text) is None, text
    for text in [b"NaN", b"-Infinity", b'{"a":NaN}', b"[Infinity]", b"[1,-Infinity]"]:
        assert _JSON_NON_FINITE.search(text) is not None, text


# ---------------------------------------------------- pydantic without ``_use_prebuilt``


class Inner(BaseModel):
    value: float


class Outer(BaseModel):
    inner: Inner
    note: str | None = None


@pytest.fixture
def checked_serializer(monkeypatch):
    """Tasks registered meanwhile serialize as on pydantic 2.11-2.12 (`_CheckedSerializer`)."""
    from hyrex_like import payloads as registry_module

    monkeypatch.setattr(registry_module, "_SERIALIZER_MODE", "checked")


def test_without_the_prebuilt_opt_out_the_checked_serializer_is_chosen(monkeypatch):
    """pydantic < 2.13 refuses ``_use_prebuilt`` (a TypeError at registration, once); 2.11 and
    2.12 then build models' prebuilt serializers in, which ignore ``ser_json_inf_nan``, as
    does this one without the keyword: the probe sees it and picks the checked serializer."""
    from hyrex_like import payloads as registry_module

    works = registry_module._schema_serializer_works
    version = tuple(int(part) for part in pydantic.VERSION.split(".")[:2])
    assert registry_module._PREBUILT_OPT_OUT is (version >= (2, 13))
    assert registry_module._json_serializer(pydantic.TypeAdapter(Outer)).__class__.__name__ == (
        "SchemaSerializer" if works() else "_CheckedSerializer"
    )
    monkeypatch.setattr(registry_module, "_PREBUILT_OPT_OUT", False)
    works.cache_clear()
    try:
        hy = HyrexRegistry("postgresql://u@h/db")

        @hy.task
        def measure(reading: Outer) -> Outer:
            return reading

        checked = isinstance(measure._payload_serializer, registry_module._CheckedSerializer)
        assert checked is not works()
        assert checked or version <= (2, 10)  # before prebuilt serializers, ours works as is
        with pytest.raises(PayloadNotSerializable, match=r"\$\.inner\.value is nan"):
            measure.dump_payload({"inner": {"value": math.nan}})
    finally:
        works.cache_clear()


def test_the_checked_serializer_refuses_what_the_fast_one_does(
    checked_serializer, registry, database_url, schema
):
    from hyrex_like.payloads import _CheckedSerializer

    @registry.task
    def measure(reading: Outer) -> Outer:
        return reading

    @registry.task
    def keep(m: AsStrings) -> None:
        pass

    assert isinstance(measure._payload_serializer, _CheckedSerializer)
    for number in (math.nan, math.inf, -math.inf):
        with pytest.raises(PayloadNotSerializable) as info:
            measure.send({"inner": {"value": number}, "note": None})
        message = str(info.value)
        assert f"task measure cannot be stored as JSON: $.inner.value is {number!r}" in message
        assert "JSON cannot hold" in message, message
        with pytest.raises(PayloadNotSerializable, match=r"returned a value.*\$\.inner\.value"):
            measure.dump_result(Outer(inner=Inner(value=number)))
    with pytest.raises(PayloadNotSerializable, match="NUL"):
        measure.send({"inner": {"value": 1}, "note": "a\x00b"})
    # what JSON holds goes through as it is, null included
    measure.send({"inner": {"value": 2.5}, "note": None})
    assert json.loads(measure.dump_result(Outer(inner=Inner(value=1)))) == {
        "inner": {"value": 1.0},
        "note": None,
    }
    keep.send(AsStrings(value=math.nan))  # the model's own choice stands
    rows = query(database_url, schema, "SELECT args FROM task")
    assert sorted(json.dumps(r[0], sort_keys=True) for r in rows) == [
        json.dumps({"inner": {"value": 2.5}, "note": None}, sort_keys=True),
        json.dumps({"value": "NaN"}),
    ]


def test_many_brackets_that_are_not_deep_are_accepted(registry, database_url, schema):
    @registry.task
    def rows(data: list[dict[str, Any]]) -> None:
        pass

    payload = [{"v": [i], "text": "[[[[{{{{"} for i in range(500)]  # 2,000+ brackets, 3 deep
    handle = rows.send(payload)
    [(stored,)] = query(database_url, schema, "SELECT args FROM task WHERE id = %s", [handle.id])
    assert stored == payload


def test_send_many_names_the_bad_items_index_and_task(registry, database_url, schema):
    @registry.task
    def plot(p: Point) -> None:
        pass

    @registry.task
    def note(text: str) -> None:
        pass

    registry.migrate()
    good = {"x": 1, "y": 2}
    with pytest.raises(pydantic.ValidationError) as info:
        plot.send_many([good, good, {"x": 3}])
    assert "payload for task plot (item 2 of send_many) does not match" in "\n".join(
        info.value.__notes__
    )
    with pytest.raises(PayloadNotSerializable, match=r"task note \(item 1 of send_many\).*NUL"):
        note.send_many(["fine", "bad\x00"])
    with pytest.raises(PayloadNotSerializable, match=r"task note \(item 0 of send_many\)"):
        note.send_many(["\ud800"])
    assert count(database_url, schema) == 0


def test_validation_error_names_the_task_and_stays_a_validation_error(registry):
    @registry.task
    def plot(p: Point) -> None:
        pass

    with pytest.raises(pydantic.ValidationError) as info:
        plot.send({"x": 1, "y": "high"})
    assert info.value.__notes__ == ["payload for task plot does not match its annotation"]


# ------------------------------------------------------------------- results: one rule


@pytest.mark.parametrize(
    ("task", "value", "needle"),
    [
        ("typed_nan", {"value": math.nan}, "$.value is nan"),
        ("untyped_inf", {"value": math.inf}, "$.value is inf"),
        ("surrogate_key", {"k\udc80": 1}, "lone surrogate"),
        ("too_deep", None, "MAX_NESTING_DEPTH"),
        ("typed_nan", {"value\x00": 1.0}, "NUL"),
    ],
)
def test_unstorable_results_are_refused_typed_or_not(task, value, needle):
    definition = hostile_results_app.hy.tasks[task]
    if value is None:
        value = _nested(MAX_NESTING_DEPTH + 1)
    with pytest.raises(PayloadNotSerializable) as info:
        definition.dump_result(value)
    message = str(info.value)
    assert f"task {task} returned a value that cannot be stored as JSON" in message
    assert needle in message, message


def test_deepest_storable_result_is_accepted():
    definition = hostile_results_app.hy.tasks["deepest"]
    assert json.loads(definition.dump_result(_nested(MAX_NESTING_DEPTH))) == _nested(
        MAX_NESTING_DEPTH
    )


def test_unstorable_results_fail_the_attempt_in_a_real_worker(
    app_registry, worker, database_url, schema
):
    app = hostile_results_app
    app_registry(app.hy)
    names = ["typed_nan", "untyped_inf", "surrogate_key", "too_deep"]
    handles = {name: app.hy.tasks[name].send(1) for name in names}
    deepest = app.deepest.send(1)
    w = worker("hostile_results_app:hy", "--processes", "1", "--poll-interval", "0.1")
    for name, h in handles.items():
        h.wait(30)
        assert (h.status, h.attempt_count) == ("failed", 1), (name, h.task_runs)
        [run] = h.task_runs
        assert run.error_type == "PayloadNotSerializable"
        assert f"task {name} returned a value that cannot be stored" in (run.error_message or "")
        assert h.last_error == run.error  # one shape for both
        assert h.row.result is None
    assert deepest.wait(30).status == "completed"
    assert deepest.result == _nested(MAX_NESTING_DEPTH)
    assert w.stop() == 0
