"""The app of the browser tests of the dashboard (tests/test_dashboard_browser.py), with data
that looks like a real deployment's: `hyrex-like run-worker dash_app:hy`.

- queue ``emails``: ``send_receipt`` completes; ``send_newsletter`` is sent delayed.
- queue ``billing``: ``charge_card`` fails with a traceback (no retries) when the amount is
  negative.
- queue ``reports``: ``build_report`` reports progress and runs until the ``hy.kv`` key named in
  its payload is set (at most ``max_wait`` seconds), so a test controls when it finishes.
- queue ``default``: the hostile task, named ``<script>alert(1)</script>``, which fails with its
  payload's text as the error message.
- the workflow ``nightly_etl``: extract >> transform >> [load_warehouse, load_search] >> publish,
  and ``month_end``: close_books >> build_report >> email_report (it waits in build_report).
- two schedules: ``rollup`` every minute and ``purge_sessions`` at 03:00 Paris time.
"""

from __future__ import annotations

import time
from datetime import timedelta

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, Workflow, cron, every, get_hyrex_context

hy = HyrexRegistry()

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_TEXT = "<img src=x onerror=window.__pwned=1>"


class Receipt(BaseModel):
    order_id: int
    email: str


class Charge(BaseModel):
    customer: str
    amount_cents: int


class Report(BaseModel):
    name: str
    release_key: str
    max_wait: float = 60.0


class Hostile(BaseModel):
    html: str


class Batch(BaseModel):
    day: str
    rows: int


class Month(BaseModel):
    month: str
    release_key: str


class Loaded(BaseModel):
    load_warehouse: int
    load_search: int


class CardDeclined(RuntimeError):
    """The payment provider refused the charge."""


@hy.task(queue="emails")
def send_receipt(receipt: Receipt) -> str:
    return f"receipt for order {receipt.order_id} sent to {receipt.email}"


@hy.task(queue="emails")
def send_newsletter(receipt: Receipt) -> None:
    """Sent with a delay: it waits in its queue."""


def _authorize(charge: Charge) -> None:
    if charge.amount_cents < 0:
        raise CardDeclined(f"card of {charge.customer} declined: amount {charge.amount_cents}")


@hy.task(queue="billing", max_retries=0)
def charge_card(charge: Charge) -> dict[str, object]:
    _authorize(charge)
    return {"customer": charge.customer, "charged": charge.amount_cents}


@hy.task(queue="reports")
def build_report(report: Report) -> str:
    """Runs until ``hy.kv`` holds ``report.release_key`` (polled every 50 ms)."""
    ctx = get_hyrex_context()
    deadline = time.monotonic() + report.max_wait
    polls = 0
    while hy.kv.get(report.release_key) is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{report.release_key} was not set within {report.max_wait}s")
        polls += 1
        if ctx is not None and polls % 10 == 1:
            ctx.update_progress({"phase": "waiting for data", "polls": polls})
        time.sleep(0.05)
    return f"report {report.name} built"


@hy.task(name=HOSTILE_NAME, max_retries=0)
def hostile(payload: Hostile) -> None:
    raise ValueError(payload.html)


@hy.task(queue="etl")
def extract(batch: Batch) -> list[int]:
    return list(range(batch.rows))


@hy.task(queue="etl")
def transform(rows: list[int]) -> list[int]:
    return [r * 2 for r in rows]


@hy.task(queue="etl")
def load_warehouse(rows: list[int]) -> int:
    return len(rows)


@hy.task(queue="etl")
def load_search(rows: list[int]) -> int:
    return sum(rows)


@hy.task(queue="etl")
def publish(loaded: Loaded) -> str:
    return f"{loaded.load_warehouse} rows published"


nightly_etl: Workflow[Batch, str] = hy.workflow(
    "nightly_etl", extract >> transform >> [load_warehouse, load_search] >> publish
)


@hy.task(queue="reports")
def close_books(month: Month) -> Report:
    return Report(name=f"books-{month.month}", release_key=month.release_key, max_wait=120)


@hy.task(queue="emails")
def email_report(summary: str) -> None:
    """Mails the report to finance."""


month_end: Workflow[Month, None] = hy.workflow(
    "month_end", close_books >> build_report >> email_report
)


@hy.task(schedule=every(timedelta(minutes=1)), queue="maintenance")
def rollup() -> None:
    """Aggregates the last minute's orders."""


@hy.task(schedule=cron("0 3 * * *", tz="Europe/Paris"), queue="maintenance")
def purge_sessions() -> None:
    """Deletes expired sessions every night."""
