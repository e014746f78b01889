"""The app of tests/test_tracing.py: tracing on, and at import a TracerProvider that keeps every
finished span in memory. Each process that imports the app has its own: the test process (its
send spans) and every executor (its attempt spans, which the task `spans` returns)."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hyrex_like import HyrexRegistry, get_hyrex_context

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))  # exported as each span ends
trace.set_tracer_provider(provider)

hy = HyrexRegistry(tracing=True)


@hy.task
def ok(n: int) -> int:
    return n


@hy.task
async def aok(n: int) -> int:
    await asyncio.sleep(0)
    return n


@hy.task(timeout_seconds=0.3, max_retries=0)
async def aslow(n: int) -> int:
    """Runs past its timeout: cancelled (side by side, its executor lives on)."""
    await asyncio.sleep(30)
    return n


@hy.task(max_retries=2, retry_backoff=0)
def flaky(n: int) -> int:
    """Fails its first two attempts."""
    if get_hyrex_context().attempt_number < 3:
        raise ValueError(f"attempt {get_hyrex_context().attempt_number} fails")
    return n


@hy.task(max_retries=0)
def boom(n: int) -> int:
    raise RuntimeError("boom")


@hy.task
def parent(n: int) -> str:
    """Sends a child inside its attempt: the child's send span is this attempt's child."""
    return str(ok.send(n).id)


def span_dict(span: Any) -> dict[str, Any]:
    """A finished span as JSON: ids as hex, as the test compares them."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
    }


@hy.task
def spans() -> list[dict[str, Any]]:
    """The spans this executor finished so far."""
    return [span_dict(s) for s in exporter.get_finished_spans()]
