"""The demo's tasks: typed orders, some of which fail on their first attempt and are retried."""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, Field

from hyrex_like import HyrexRegistry, get_hyrex_context

hy = HyrexRegistry()


class Order(BaseModel):
    order_id: int
    customer_email: str
    items: list[str] = Field(min_length=1)
    flaky: bool = False


class Receipt(BaseModel):
    order_id: int
    total_items: int
    attempt: int


@hy.task(queue="orders", max_retries=3, retry_backoff=lambda n: 0.2 * n, priority=6)
def process_order(order: Order) -> Receipt:
    """Fails on the first attempt of a 'flaky' order, as a flaky payment API would."""
    ctx = get_hyrex_context()
    attempt = ctx.attempt_number if ctx else 1
    if order.flaky and attempt == 1:
        raise ConnectionError(f"payment gateway timed out for order {order.order_id}")
    return Receipt(order_id=order.order_id, total_items=len(order.items), attempt=attempt)


@hy.task(queue="emails", max_retries=1, retry_backoff=0.1)
async def send_receipt_email(order: Order) -> dict[str, str]:
    await asyncio.sleep(random.uniform(0, 0.002))  # an async I/O call
    return {"to": order.customer_email, "status": "sent"}


@hy.task(queue="orders", max_retries=0)
def reject_order(order: Order) -> None:
    """Always fails: shows a task ending 'failed' with its error recorded."""
    raise ValueError(f"order {order.order_id} has an invalid address")
