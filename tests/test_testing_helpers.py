from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from hyrex_like import HyrexRegistry, TaskStatus, get_hyrex_context
from hyrex_like.errors import PayloadNotSerializable
from hyrex_like.testing import run_task, sent_tasks


class Order(BaseModel):
    order_id: int


def test_run_task_round_trips_payload_and_sets_context(registry: HyrexRegistry) -> None:
    @registry.task(queue="orders")
    def handle(order: Order) -> dict[str, object]:
        ctx = get_hyrex_context()
        assert ctx is not None
        return {"id": order.order_id, "queue": ctx.queue, "attempt": ctx.attempt_number}

    assert run_task(handle, {"order_id": "7"}) == {"id": 7, "queue": "orders", "attempt": 1}
    # a sender runs with its own config, the definition's is untouched
    urgent = handle.with_config(queue="urgent")
    assert run_task(urgent, {"order_id": 8}) == {"id": 8, "queue": "urgent", "attempt": 1}
    assert run_task(handle, {"order_id": 9})["queue"] == "orders"
    with pytest.raises(ValidationError):
        run_task(handle, {"order_id": "seven"})


def test_run_task_runs_async_tasks_and_checks_result_is_json(registry: HyrexRegistry) -> None:
    @registry.task
    async def double(n: int) -> int:
        return n * 2

    @registry.task
    def bad(n: int) -> object:
        return object()

    assert run_task(double, 21) == 42
    with pytest.raises(PayloadNotSerializable):
        run_task(bad, 1)


def test_sent_tasks_lists_what_was_sent(registry: HyrexRegistry) -> None:
    @registry.task
    def welcome(email: str) -> None:
        return None

    @registry.task
    def other(n: int) -> None:
        return None

    welcome.send("ann@example.com")
    other.send(1)
    [task] = sent_tasks(registry, "welcome")
    assert task.args == "ann@example.com"
    assert task.status == "queued"
    assert task.status is TaskStatus.QUEUED
    assert len(sent_tasks(registry)) == 2
    assert sent_tasks(registry, status="completed") == []
    assert sent_tasks(registry, status=TaskStatus.COMPLETED) == []
    assert len(sent_tasks(registry, status=TaskStatus.QUEUED)) == 2
