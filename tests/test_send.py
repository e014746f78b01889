"""`send`, `send_many`, `asend`, the caller's transaction, handles and parent/root ids, on a real
PostgreSQL schema per test."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pydantic
import pytest
from pydantic import BaseModel

from hyrex_like import (
    DatabaseError,
    HyrexContext,
    HyrexRegistry,
    InvalidTaskOption,
    PayloadNotSerializable,
    PayloadTooLarge,
    Settings,
    TaskNotFound,
    TaskWaitTimeout,
)
from hyrex_like.context import _reset_context, _set_context

from .helpers import count, query


class ProcessContext(BaseModel):
    file_path: str
    options: dict[str, Any]


CTX = ProcessContext(file_path="/data/in.csv", options={"delimiter": ","})

TASK_COLUMNS = (
    "task_name, queue, priority, status, args, max_retries, timeout_seconds, backoff_seconds, "
    "attempt_count, parent_id, root_id"
)


def task_row(database_url: str, schema: str, task_id: uuid.UUID) -> tuple[Any, ...]:
    rows = query(database_url, schema, f"SELECT {TASK_COLUMNS} FROM task WHERE id = %s", [task_id])
    assert len(rows) == 1
    return rows[0]


def schema_has_task_table(database_url: str, schema: str) -> bool:
    rows = query(database_url, schema, "SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.task"])
    return bool(rows[0][0])


# ------------------------------------------------------------------ send


def test_send_writes_one_row_with_the_task_config(registry, database_url, schema):
    @registry.task(
        queue="processing", priority=7, max_retries=3, timeout_seconds=300, retry_backoff=4
    )
    def process_file(context: ProcessContext) -> dict[str, str]:
        return {}

    handle = process_file.send(CTX)
    assert count(database_url, schema) == 1
    assert task_row(database_url, schema, handle.id) == (
        "process_file",
        "processing",
        7,
        "queued",
        {"file_path": "/data/in.csv", "options": {"delimiter": ","}},
        3,
        300.0,
        [4.0, 4.0, 4.0],
        0,
        None,
        None,
    )


def test_send_uses_defaults_without_options(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX)
    row = task_row(database_url, schema, handle.id)
    assert row[1:4] == ("default", 5, "queued")
    assert row[5:8] == (0, None, [])


def test_send_evaluates_backoff_callable_at_send_time(registry, database_url, schema):
    factor = [10]

    @registry.task(max_retries=3, retry_backoff=lambda n: n * factor[0])
    def process_file(context: ProcessContext) -> None:
        pass

    first = process_file.send(CTX)
    factor[0] = 100
    second = process_file.send(CTX)
    assert task_row(database_url, schema, first.id)[7] == [10.0, 20.0, 30.0]
    assert task_row(database_url, schema, second.id)[7] == [100.0, 200.0, 300.0]


def test_send_with_raising_backoff_callable_writes_nothing(registry, database_url, schema):
    @registry.task(max_retries=2, retry_backoff=lambda n: 1 / 0)
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(InvalidTaskOption, match="retry_backoff"):
        process_file.send(CTX)
    assert not schema_has_task_table(database_url, schema) or count(database_url, schema) == 0


def test_send_accepts_a_dict_for_a_model(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send({"file_path": "/x", "options": {}})
    assert task_row(database_url, schema, handle.id)[4] == {"file_path": "/x", "options": {}}


def test_send_stores_plain_json_types(registry, database_url, schema):
    @registry.task
    def add(numbers: list[int]) -> int:
        return sum(numbers)

    handle = add.send([1, 2, 3])
    assert task_row(database_url, schema, handle.id)[4] == [1, 2, 3]


def test_send_of_task_without_parameters_stores_null(registry, database_url, schema):
    @registry.task
    def tick() -> None:
        pass

    handle = tick.send()
    assert task_row(database_url, schema, handle.id)[4] is None


def test_send_invalid_payload_raises_validation_error_before_writing(
    registry, database_url, schema
):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    process_file.send(CTX)  # the schema exists, so a row count is meaningful
    with pytest.raises(pydantic.ValidationError, match="file_path"):
        process_file.send({"options": {}})
    with pytest.raises(pydantic.ValidationError):
        process_file.send(42)  # type: ignore[arg-type]
    assert count(database_url, schema) == 1


def test_invalid_first_send_writes_nothing(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(pydantic.ValidationError):
        process_file.send({"file_path": 1})
    assert not schema_has_task_table(database_url, schema)


def test_send_without_a_required_payload_is_rejected(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with pytest.raises(TypeError, match="needs a payload"):
        process_file.send()  # type: ignore[call-arg]
    assert not schema_has_task_table(database_url, schema)


def test_send_payload_over_the_limit_is_rejected(database_url, schema):
    settings = Settings(database_url=database_url, schema_name=schema, max_payload_bytes=100)
    hy = HyrexRegistry(settings=settings)

    @hy.task
    def echo(text: str) -> None:
        pass

    try:
        with pytest.raises(PayloadTooLarge, match="echo"):
            echo.send("x" * 200)
        echo.send("x" * 10)
        assert count(database_url, schema) == 1
    finally:
        hy.close()


def test_send_payload_with_nul_character_is_rejected(registry, database_url, schema):
    @registry.task
    def echo(text: str) -> None:
        pass

    with pytest.raises(PayloadNotSerializable, match="NUL"):
        echo.send("a\x00b")
    assert not schema_has_task_table(database_url, schema)


def test_with_config_send_uses_overridden_options(registry, database_url, schema):
    @registry.task(queue="processing", max_retries=3, retry_backoff=1)
    def process_file(context: ProcessContext) -> None:
        pass

    urgent = process_file.with_config(queue="high-priority", max_retries=5, priority=9)
    h1 = urgent.send(CTX)
    h2 = process_file.send(CTX)
    r1, r2 = task_row(database_url, schema, h1.id), task_row(database_url, schema, h2.id)
    assert (r1[1], r1[2], r1[5], len(r1[7])) == ("high-priority", 9, 5, 5)
    assert (r2[1], r2[2], r2[5], len(r2[7])) == ("processing", 5, 3, 3)


def test_task_ids_are_time_ordered(registry):
    @registry.task
    def echo(n: int) -> None:
        pass

    ids = [echo.send(i).id for i in range(20)]
    assert all(i.version == 7 for i in ids)
    assert sorted(ids) == ids


# ------------------------------------------------------------------ send_many


def test_send_many_writes_all_rows(registry, database_url, schema):
    @registry.task(queue="bulk", max_retries=2, retry_backoff=lambda n: n)
    def process_file(context: ProcessContext) -> None:
        pass

    payloads = [{"file_path": f"/f{i}", "options": {}} for i in range(50)]
    handles = process_file.send_many(payloads)
    assert len(handles) == 50
    assert count(database_url, schema) == 50
    rows = query(
        database_url,
        schema,
        "SELECT args->>'file_path', queue, max_retries, backoff_seconds, status FROM task "
        "WHERE id = %s",
        [handles[7].id],
    )
    assert rows == [("/f7", "bulk", 2, [1.0, 2.0], "queued")]


def test_send_many_uses_one_statement(registry, database_url, schema):
    @registry.task
    def echo(n: int) -> None:
        pass

    echo.send(0)  # migrates; then count INSERT statements with a statement-level trigger
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as c:
        c.execute("CREATE TABLE stmt_log (n int)")
        c.execute(
            "CREATE FUNCTION log_stmt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO stmt_log SELECT count(*) FROM new_rows; RETURN NULL; END $$"
        )
        c.execute(
            "CREATE TRIGGER log_stmt AFTER INSERT ON task REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION log_stmt()"
        )
    echo.send_many(list(range(100)))
    assert query(database_url, schema, "SELECT n FROM stmt_log") == [(100,)]
    assert count(database_url, schema) == 101


def test_send_many_with_one_invalid_payload_writes_nothing(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    process_file.send(CTX)
    payloads: list[Any] = [{"file_path": f"/f{i}", "options": {}} for i in range(10)]
    payloads[6] = {"file_path": None, "options": {}}
    with pytest.raises(pydantic.ValidationError):
        process_file.send_many(payloads)
    assert count(database_url, schema) == 1


def test_send_many_failing_in_the_database_writes_nothing(registry, database_url, schema):
    @registry.task
    def echo(n: int) -> None:
        pass

    echo.send(0)
    rows_before = count(database_url, schema)
    tasks = [echo._new_task(i, []) for i in range(5)]
    tasks.append(tasks[0])  # a duplicate id: the COPY fails on the last row
    with pytest.raises(DatabaseError):
        registry.store.insert_tasks(tasks)
    assert count(database_url, schema) == rows_before


def test_send_many_of_nothing_writes_nothing(registry, database_url, schema):
    @registry.task
    def echo(n: int) -> None:
        pass

    assert echo.send_many([]) == []
    assert not schema_has_task_table(database_url, schema) or count(database_url, schema) == 0


# ------------------------------------------------------------------ the caller's transaction


def test_send_with_conn_rolled_back_leaves_no_task(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with psycopg.connect(database_url) as conn:
        process_file.send(CTX, conn=conn)
        conn.rollback()
    assert count(database_url, schema) == 0


def test_send_with_conn_is_visible_only_after_commit(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with psycopg.connect(database_url) as conn:
        handle = process_file.send(CTX, conn=conn)
        assert count(database_url, schema) == 0  # not yet committed
        conn.commit()
    assert task_row(database_url, schema, handle.id)[0] == "process_file"


def test_send_with_conn_leaves_the_callers_search_path_alone(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with psycopg.connect(database_url) as conn:
        before = conn.execute("SHOW search_path").fetchone()
        process_file.send(CTX, conn=conn)
        assert conn.execute("SHOW search_path").fetchone() == before
        conn.commit()


def test_send_with_autocommit_conn_writes_at_once(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    with psycopg.connect(database_url, autocommit=True) as conn:
        process_file.send(CTX, conn=conn)
    assert count(database_url, schema) == 1


def test_send_many_with_conn_rolled_back_leaves_no_task(registry, database_url, schema):
    @registry.task
    def echo(n: int) -> None:
        pass

    with psycopg.connect(database_url) as conn:
        echo.send_many(range(10), conn=conn)
        conn.rollback()
        echo.send_many(range(3), conn=conn)
        conn.commit()
    assert count(database_url, schema) == 3


# ------------------------------------------------------------------ asend


def test_asend_writes_one_row(registry, database_url, schema):
    @registry.task(queue="web", priority=8)
    def process_file(context: ProcessContext) -> None:
        pass

    async def main() -> uuid.UUID:
        try:
            handle = await process_file.asend(CTX)
            return handle.id
        finally:
            await registry.store.aclose()

    task_id = asyncio.run(main())
    assert task_row(database_url, schema, task_id)[:4] == ("process_file", "web", 8, "queued")


def test_asend_invalid_payload_raises_before_writing(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    async def main() -> None:
        await process_file.asend({"file_path": "/a", "options": {}})
        try:
            await process_file.asend({"options": {}})
        finally:
            await registry.store.aclose()

    with pytest.raises(pydantic.ValidationError):
        asyncio.run(main())
    assert count(database_url, schema) == 1


def test_asend_with_async_conn_follows_the_callers_transaction(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    async def main() -> tuple[uuid.UUID, uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            dropped = await process_file.asend(CTX, conn=conn)
            await conn.rollback()
            kept = await process_file.asend(CTX, conn=conn)
            await conn.commit()
        return dropped.id, kept.id

    dropped, kept = asyncio.run(main())
    ids = [r[0] for r in query(database_url, schema, "SELECT id FROM task")]
    assert ids == [kept]
    assert dropped not in ids


# ------------------------------------------------------------------ handles


def test_handle_has_id_and_task_name_at_once(registry):
    @registry.task(name="files.process")
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX)
    assert isinstance(handle.id, uuid.UUID)
    assert handle.task_name == "files.process"


def test_handle_refresh_reads_status_and_runs(registry, database_url, schema):
    @registry.task(queue="processing", priority=3)
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX).refresh()
    assert (handle.status, handle.queue, handle.priority) == ("queued", "processing", 3)
    assert handle.task_runs == []
    assert handle.done is False


def test_handle_task_runs_show_each_attempt(registry, database_url, schema):
    @registry.task(max_retries=1)
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX)
    # What a worker records (the worker tests cover the real path).
    query(
        database_url,
        schema,
        "INSERT INTO task_run (task_id, attempt_number, status, finished_at, error_type, "
        "error_message) VALUES (%s, 1, 'failed', now(), 'ValueError', 'bad row')",
        [handle.id],
    )
    query(
        database_url,
        schema,
        "INSERT INTO task_run (task_id, attempt_number, status, finished_at, result) "
        "VALUES (%s, 2, 'completed', now(), '{\"ok\": true}')",
        [handle.id],
    )
    runs = handle.refresh().task_runs
    assert [(r.attempt_number, r.status, r.result, r.error) for r in runs] == [
        (1, "failed", None, {"type": "ValueError", "message": "bad row", "attempt": 1}),
        (2, "completed", {"ok": True}, None),
    ]


def test_handle_wait_returns_when_the_task_is_final(registry, database_url, schema):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX)
    query(
        database_url,
        schema,
        "UPDATE task SET status = 'completed', result = '\"done\"' WHERE id = %s",
        [handle.id],
    )
    assert handle.wait(timeout=5).status == "completed"
    assert handle.result == "done"


def test_handle_wait_times_out_naming_the_task(registry):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    handle = process_file.send(CTX)
    with pytest.raises(TaskWaitTimeout, match=f"{handle.id}.*queued"):
        handle.wait(timeout=0.2)


def test_handle_for_unknown_id_raises_task_not_found(registry):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    process_file.send(CTX)
    with pytest.raises(TaskNotFound):
        registry.get_handle(uuid.uuid4())


def test_get_handle_reads_an_existing_task(registry):
    @registry.task
    def process_file(context: ProcessContext) -> None:
        pass

    sent = process_file.send(CTX)
    again = registry.get_handle(str(sent.id))
    assert (again.id, again.task_name, again.status) == (sent.id, "process_file", "queued")


# ------------------------------------------------------------------ parent and root ids


def _context(task_id: uuid.UUID, root_id: uuid.UUID | None = None) -> HyrexContext:
    return HyrexContext(
        task_id=task_id,
        task_name="parent",
        attempt_number=1,
        max_retries=0,
        queue="default",
        priority=5,
        parent_id=root_id,
        root_id=root_id,
    )


def test_send_outside_a_task_has_no_parent(registry, database_url, schema):
    @registry.task
    def child(n: int) -> None:
        pass

    handle = child.send(1)
    assert task_row(database_url, schema, handle.id)[9:] == (None, None)


def test_send_from_a_top_level_task_records_it_as_parent_and_root(registry, database_url, schema):
    @registry.task
    def child(n: int) -> None:
        pass

    parent = uuid.uuid4()
    token = _set_context(_context(parent))
    try:
        handle = child.send(1)
    finally:
        _reset_context(token)
    assert task_row(database_url, schema, handle.id)[9:] == (parent, parent)
    assert child.send(2).refresh().parent_id is None  # context restored


def test_send_from_a_nested_task_keeps_the_root(registry, database_url, schema):
    @registry.task
    def grandchild(n: int) -> None:
        pass

    root, parent = uuid.uuid4(), uuid.uuid4()
    token = _set_context(_context(parent, root_id=root))
    try:
        one = grandchild.send(1)
        many = grandchild.send_many([2, 3])
    finally:
        _reset_context(token)
    for handle in [one, *many]:
        assert task_row(database_url, schema, handle.id)[9:] == (parent, root)


def test_send_payload_that_validates_but_is_not_json_is_rejected(registry, database_url, schema):
    @registry.task
    def store(blob: dict[str, Any]) -> None:
        pass

    with pytest.raises(PayloadNotSerializable, match="store"):
        store.send({"handle": object()})
    assert not schema_has_task_table(database_url, schema)
