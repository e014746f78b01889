"""Decoration-time checks, task config, `with_config`, direct calls and the context default.

None of these touch the database: a registry connects only on first send, and every check here
must fail (or pass) before that.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pydantic import BaseModel

from hyrex_like import (
    DuplicateTaskName,
    HyrexContext,
    HyrexRegistry,
    InvalidTaskId,
    InvalidTaskOption,
    NoTaskContext,
    TaskDefinitionError,
    TaskNotFound,
    get_hyrex_context,
)

from .helpers import count


class ProcessContext(BaseModel):
    file_path: str
    options: dict[str, Any]


class Item(BaseModel):
    n: int


@pytest.fixture
def hy(database_url: str, schema: str) -> HyrexRegistry:
    return HyrexRegistry(database_url, schema=schema)


# ------------------------------------------------------------------ decoration-time checks


def test_parameter_without_annotation_is_rejected_naming_function_and_parameter(hy):
    def process_file(context):  # type: ignore[no-untyped-def]
        return context

    with pytest.raises(TypeError, match=r"process_file.*'context'.*no type annotation"):
        hy.task(process_file)


def test_star_args_is_rejected_naming_the_parameter(hy):
    def fan_out(*items: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"fan_out.*\*items"):
        hy.task(fan_out)


def test_star_star_kwargs_is_rejected_naming_the_parameter(hy):
    def configure(**settings: str) -> None:
        pass

    with pytest.raises(TypeError, match=r"configure.*\*\*settings"):
        hy.task(configure)


def test_annotation_that_cannot_be_json_is_rejected(hy):
    def serve(sock: socket.socket) -> None:
        pass

    with pytest.raises(TaskDefinitionError, match=r"serve.*parameter 'sock'.*JSON"):
        hy.task(serve)


def test_return_annotation_that_cannot_be_json_is_rejected(hy):
    def open_socket(port: int) -> socket.socket:
        raise NotImplementedError

    with pytest.raises(TaskDefinitionError, match=r"open_socket.*return annotation"):
        hy.task(open_socket)


def test_more_than_one_parameter_is_rejected(hy):
    def copy(src: str, dst: str) -> None:
        pass

    with pytest.raises(TypeError, match=r"copy.*src, dst"):
        hy.task(copy)


def test_keyword_only_parameter_is_rejected(hy):
    def resize(*, width: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"resize.*'width'"):
        hy.task(resize)


def test_unknown_option_is_rejected_naming_it(hy):
    with pytest.raises(TypeError, match="retries"):
        hy.task(retries=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", 0),
        ("priority", 11),
        ("priority", 5.5),
        ("priority", True),
        ("max_retries", -1),
        ("timeout_seconds", 0),
        ("timeout_seconds", -3),
        ("timeout_seconds", float("inf")),
        ("retry_backoff", -1),
        ("retry_backoff", float("nan")),
        ("queue", ""),
        ("queue", "a\x00b"),
        ("queue", "q" * 256),
        ("queue", 7),
        ("retry_backoff", "soon"),
        ("on_error", 5),
    ],
)
def test_out_of_range_option_is_rejected_naming_task_and_option(hy, option, value):
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(ValueError, match=rf"process_file.*{option}"):
        hy.task(**{option: value})(process_file)
    assert "process_file" not in hy.tasks


def test_options_at_the_limits_are_accepted(hy):
    @hy.task(priority=10, max_retries=0, timeout_seconds=0.5, retry_backoff=0)
    def high(n: int) -> int:
        return n

    @hy.task(priority=1)
    def low(n: int) -> int:
        return n

    assert (high.config.priority, low.config.priority) == (10, 1)


def test_duplicate_task_name_is_rejected(hy):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    def other(n: int) -> None:
        pass

    with pytest.raises(DuplicateTaskName, match="'process_file' is already registered"):
        hy.task(name="process_file")(other)
    assert hy.tasks["process_file"] is process_file


def test_same_name_in_two_registries_is_allowed(hy, database_url, schema):
    other = HyrexRegistry(database_url, schema=schema)

    def process_file(n: int) -> None:
        pass

    hy.task(process_file)
    other.task(process_file)
    assert "process_file" in hy.tasks and "process_file" in other.tasks


@pytest.mark.parametrize("name", ["", "   ", "x" * 256, "bad\x00name", "tab\tname"])
def test_bad_task_name_is_rejected(hy, name):
    def f(n: int) -> None:
        pass

    with pytest.raises(ValueError, match="task name"):
        hy.task(name=name)(f)


def test_decorator_without_parentheses_uses_defaults(hy):
    @hy.task
    def process_file(context: ProcessContext) -> dict[str, str]:
        return {"file": context.file_path}

    assert process_file.name == "process_file"
    c = process_file.config
    assert (c.queue, c.priority, c.max_retries, c.timeout_seconds) == ("default", 5, 0, None)


def test_decorator_with_options_records_them(hy):
    def alert(exc: Exception) -> None:
        pass

    @hy.task(
        name="files.process",
        queue="processing",
        max_retries=3,
        timeout_seconds=300,
        priority=7,
        retry_backoff=lambda n: n * 10,
        on_error=alert,
    )
    def process_file(context: ProcessContext) -> dict[str, str]:
        return {"file": context.file_path}

    assert hy.tasks["files.process"] is process_file
    c = process_file.config
    assert (c.queue, c.priority, c.max_retries, c.timeout_seconds) == ("processing", 7, 3, 300)
    assert c.on_error is alert
    assert c.backoff_schedule() == [10.0, 20.0, 30.0]


def test_task_without_parameters_is_accepted(hy):
    @hy.task
    def tick() -> str:
        return "tock"

    assert tick.param_name is None


def test_async_task_is_accepted(hy):
    @hy.task
    async def fetch(url: str) -> int:
        return len(url)

    assert fetch.is_async


def test_decorated_task_keeps_name_and_docstring(hy):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        """Process one file."""

    assert process_file.__name__ == "process_file"
    assert process_file.__doc__ == "Process one file."


def test_failed_decoration_writes_nothing(hy, database_url, schema):
    @hy.task
    def ok(n: int) -> None:
        pass

    ok.send(1)  # creates the schema
    with pytest.raises(ValueError):
        hy.task(priority=99)(lambda n: n)
    assert count(database_url, schema) == 1


# ------------------------------------------------------------------ with_config


def test_with_config_returns_sender_with_new_options_and_leaves_task_unchanged(hy):
    @hy.task(queue="processing", max_retries=3, priority=5)
    def process_file(context: ProcessContext) -> None:
        pass

    urgent = process_file.with_config(queue="high-priority", max_retries=5)
    assert (urgent.config.queue, urgent.config.max_retries) == ("high-priority", 5)
    assert urgent.config.priority == 5  # inherited
    assert (process_file.config.queue, process_file.config.max_retries) == ("processing", 3)


def test_with_config_can_be_chained(hy):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    sender = process_file.with_config(priority=9).with_config(queue="q2")
    assert (sender.config.priority, sender.config.queue) == (9, "q2")
    assert (process_file.config.priority, process_file.config.queue) == (5, "default")


def test_a_sender_is_not_a_definition_but_knows_its_definition(hy):
    """`with_config` gives a sender (a definition plus overrides), not another definition."""
    from hyrex_like.task import TaskDefinition

    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    sender = process_file.with_config(priority=9).with_config(queue="q2")
    assert isinstance(process_file, TaskDefinition)
    assert not isinstance(sender, TaskDefinition)
    assert sender.definition is process_file and process_file.definition is process_file


@pytest.mark.parametrize(
    ("option", "value"),
    [("priority", 0), ("priority", 11), ("max_retries", -1), ("timeout_seconds", 0), ("queue", "")],
)
def test_with_config_rejects_out_of_range_values(hy, option, value):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match=rf"process_file.*{option}"):
        process_file.with_config(**{option: value})
    assert process_file.config.priority == 5


def test_with_config_rejects_unknown_option(hy):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(TypeError, match="colour"):
        process_file.with_config(colour="red")  # type: ignore[call-arg]


def test_with_config_refuses_on_error(hy):
    @hy.task
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match="on_error"):
        process_file.with_config(on_error=print)


def test_with_config_can_clear_timeout(hy):
    @hy.task(timeout_seconds=10)
    def process_file(context: ProcessContext) -> None:
        pass

    assert process_file.with_config(timeout_seconds=None).config.timeout_seconds is None
    assert process_file.config.timeout_seconds == 10


# ------------------------------------------------------------------ backoff schedule


def test_numeric_backoff_gives_one_equal_delay_per_retry(hy):
    @hy.task(max_retries=3, retry_backoff=2.5)
    def t(n: int) -> None:
        pass

    assert t.config.backoff_schedule() == [2.5, 2.5, 2.5]


def test_default_backoff_is_exponential(hy):
    @hy.task(max_retries=4)
    def t(n: int) -> None:
        pass

    assert t.config.backoff_schedule() == [1.0, 2.0, 4.0, 8.0]


def test_backoff_callable_returning_a_non_number_is_rejected(hy):
    @hy.task(max_retries=2, retry_backoff=lambda n: "soon")  # type: ignore[arg-type,return-value]
    def t(n: int) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match=r"retry_backoff\(1\) returned 'soon'"):
        t.config.backoff_schedule()


# ------------------------------------------------------------------ direct calls, context


def test_direct_call_runs_the_function_in_process(hy):
    calls: list[str] = []

    @hy.task
    def process_file(context: ProcessContext) -> dict[str, str]:
        calls.append(context.file_path)
        return {"status": "completed", "file": context.file_path}

    out = process_file(ProcessContext(file_path="/data/in.csv", options={}))
    assert out == {"status": "completed", "file": "/data/in.csv"}
    assert calls == ["/data/in.csv"]


def test_direct_call_does_not_touch_the_database(database_url, schema):
    hy = HyrexRegistry("postgresql://nobody@127.0.0.1:1/none", schema=schema)

    @hy.task
    def double(n: int) -> int:
        return n * 2

    assert double(21) == 42


def test_direct_call_of_task_without_parameters(hy):
    @hy.task
    def tick() -> str:
        return "tock"

    assert tick() == "tock"


def test_direct_call_of_async_task_returns_coroutine(hy):
    import asyncio

    @hy.task
    async def double(n: int) -> int:
        return n * 2

    assert asyncio.run(double(4)) == 8


def test_context_outside_a_task_raises_and_says_how_to_ask_optionally():
    with pytest.raises(NoTaskContext) as info:
        get_hyrex_context()
    assert isinstance(info.value, LookupError)
    assert "outside a task" in str(info.value)
    assert "get_hyrex_context(default=None)" in str(info.value)
    assert get_hyrex_context(default=None) is None


def test_direct_call_has_a_local_context_from_the_task_config(hy):
    @hy.task(queue="processing", priority=7, max_retries=3)
    def process_file(context: ProcessContext) -> HyrexContext:
        return get_hyrex_context()

    first = process_file(ProcessContext(file_path="/x", options={}))
    second = process_file(ProcessContext(file_path="/y", options={}))
    assert first.is_local is True
    assert (first.task_name, first.attempt_number, first.queue, first.priority) == (
        "process_file",
        1,
        "processing",
        7,
    )
    assert first.max_retries == 3 and first.worker_id is None and first.parent_id is None
    assert first.task_id != second.task_id  # a fresh id per call
    assert get_hyrex_context(default=None) is None  # and gone after the call


def test_direct_call_of_an_async_task_has_its_local_context_while_it_runs(hy):
    import asyncio

    @hy.task(queue="q")
    async def peek(n: int) -> str:
        await asyncio.sleep(0)
        return get_hyrex_context().queue

    assert asyncio.run(peek(1)) == "q"


def test_a_task_sent_from_a_direct_call_records_the_enclosing_task_not_a_made_up_one(
    hy, database_url, schema
):
    from hyrex_like.testing import run_task

    from .helpers import query

    @hy.task
    def child(n: int) -> None:
        pass

    @hy.task
    def parent(n: int) -> str:
        return str(child.send(n).id)

    @hy.task
    def outer(n: int) -> list[str]:  # run as a worker would: a real context
        return [parent(n), str(get_hyrex_context().task_id)]

    lone = parent(1)  # a direct call outside any task: no parent recorded
    inner, outer_id = run_task(outer, 2)
    rows = dict(
        (str(r[0]), (r[1], r[2]))
        for r in query(database_url, schema, "SELECT id, parent_id, root_id FROM task")
    )
    assert rows[lone] == (None, None)
    assert (str(rows[inner][0]), str(rows[inner][1])) == (outer_id, outer_id)


def test_keyword_arguments_to_send_say_a_task_takes_one_payload(hy, database_url, schema):
    import asyncio

    @hy.task
    def echo(item: Item) -> int:
        return item.n

    @hy.task
    def tally(counts: dict[str, int]) -> int:
        return len(counts)

    @hy.task
    def tick() -> None:
        pass

    hy.migrate()
    with pytest.raises(TypeError) as info:
        echo.send(n=3)  # type: ignore[arg-type]
    message = str(info.value)
    assert "task echo takes one payload, not keyword arguments (got n=3)" in message
    assert "echo.send(Item(n=3)) or echo.send({'n': 3})" in message
    with pytest.raises(TypeError, match=r"write tally\.send\(\{'a': 1\}\)$"):
        tally.send(a=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"await echo\.asend\(Item\(n=3\)\)"):
        asyncio.run(echo.asend(n=3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"echo\.with_config.*|write echo\.send\(Item"):
        echo.with_config(priority=9).send(n=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"write echo\(Item\(n=3\)\)"):
        echo(n=3)  # type: ignore[call-overload]
    with pytest.raises(
        TypeError, match=r"task tick takes no payload \(got x=1\): write tick\.send\(\)"
    ):
        tick.send(x=1)  # type: ignore[arg-type]
    assert count(database_url, schema) == 0


def test_get_handle_of_a_malformed_id_names_it(hy):
    with pytest.raises(InvalidTaskId) as info:
        hy.get_handle("not-a-uuid")
    assert isinstance(info.value, ValueError)
    assert "'not-a-uuid' is not a UUID" in str(info.value)


def test_task_not_found_never_shows_a_placeholder_name(hy):
    import uuid

    missing = uuid.uuid4()
    for task_id in (missing, str(missing)):
        with pytest.raises(TaskNotFound) as info:
            hy.get_handle(task_id)
        assert str(missing) in str(info.value)
        assert "(?)" not in str(info.value) and "?" not in str(info.value)
