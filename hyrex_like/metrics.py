"""Prometheus metrics (extra ``hyrex-like[metrics]``): a worker's own, and the cluster's.

`WorkerMetrics` is a `WorkerObserver`: its hooks add to plain counters under one lock (a dict
increment and a bisect per ended attempt), and the Prometheus families are built only when
``/metrics`` is scraped. prometheus_client's labelled metrics are not used on the hot path
(a few microseconds per update). ``run-worker --metrics-port P`` serves them from the worker's
parent process.

The queues' depth and age are the cluster's, not a worker's: `ClusterCollector` reads them
from the database (cached a few seconds), for ``hyrex-like metrics`` or the dashboard's
``/metrics`` (`cluster_registry`, `cluster_app`), never from every worker.

prometheus_client is imported only when metrics are asked for; without the extra,
`ConfigurationError` says what to install.
"""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .logs import get_logger
from .observer import WorkerObserver, WorkerView
from .states import RunStatus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .db import FinishedRow
    from .registry import HyrexRegistry

__all__ = [
    "ClusterCollector",
    "MetricsServer",
    "WorkerMetrics",
    "cluster_app",
    "cluster_registry",
    "render",
    "serve",
]

log = get_logger("hyrex_like.metrics")

INSTALL_HINT = "pip install 'hyrex-like[metrics]'"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CLAIM_SIZE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CLAIM_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
_TIMED = frozenset((RunStatus.COMPLETED, RunStatus.FAILED))
"""The attempts whose run time the duration histogram records."""


def _require() -> None:
    """`ConfigurationError` naming the extra if prometheus_client is not installed (without
    importing it)."""
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(f"metrics need the prometheus-client package: {INSTALL_HINT}")


def _prometheus() -> Any:
    """The prometheus_client module, or `ConfigurationError` naming the extra to install."""
    try:
        import prometheus_client
        import prometheus_client.core  # (not imported by the package itself)
    except ImportError:
        raise ConfigurationError(
            f"metrics need the prometheus-client package: {INSTALL_HINT}"
        ) from None
    return prometheus_client


class _Histogram:
    """Bucket counts and a sum; `families` turns them cumulative at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*map(float, self.bounds), float("inf")], self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class WorkerMetrics(WorkerObserver):
    """One worker's metrics: an observer to pass to ``hy.worker(observer=...)`` (with others
    through `MultiObserver`), and a Prometheus collector (``collect``).

    With ``port``, ``/metrics`` is served on ``host:port`` from the worker's parent process once
    it has started its executors (so they are still forked from a single thread), until the
    worker's run ends; a port it cannot listen on stops the worker's start
    (`ConfigurationError`)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.server: MetricsServer | None = None
        self.registry: CollectorRegistry | None = None
        self._lock = threading.Lock()
        self._attempts: dict[tuple[str, str, RunStatus], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._claim_size = _Histogram(CLAIM_SIZE_BUCKETS)
        self._claim_seconds = _Histogram(CLAIM_SECONDS_BUCKETS)
        self._counters = {"executor_restarts": 0, "heartbeats": 0, "rescued_tasks": 0}
        self._worker_id: uuid.UUID | None = None
        self._view: WorkerView | None = None
        if port is not None:
            _require()  # now, so a missing extra stops the worker before it starts

    def new_registry(self) -> CollectorRegistry:
        """A private registry holding only this collector."""
        registry: CollectorRegistry = _prometheus().CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def close(self) -> None:
        """Stop serving (called by `detached` as the worker's run ends)."""
        if self.server is not None:
            self.server.close()
            self.server = None

    # ---------------------------------------------------------------- hooks

    def attached(self, worker_id: uuid.UUID, view: WorkerView) -> None:
        self._worker_id = worker_id
        self._view = view
        if self.port is not None and self.server is None:
            # Imported and bound only now: the executors were forked from a single thread
            # meanwhile, and start while prometheus_client imports (~50 ms).
            self.registry = self.registry or self.new_registry()
            try:
                self.server = serve(self.port, self.host, self.registry)
            except OSError as exc:
                # ConfigurationError passes the observer's guard: the worker does not start
                # without the metrics it was asked to serve.
                raise ConfigurationError(
                    f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}; "
                    "choose another --metrics-port"
                ) from exc
            log.info("metrics_serving", url=self.server.url)

    def detached(self) -> None:
        self.close()

    def attempts(self, rows: Sequence[FinishedRow]) -> None:
        with self._lock:
            counts = self._attempts
            durations = self._durations
            for row in rows:
                key = (row.task_name, row.queue, row.status)
                counts[key] = counts.get(key, 0) + 1
                # Only whole runs: an attempt cut short (timed out, lost, interrupted,
                # canceled) would mix the limit or the moment it was stopped into run times.
                if row.started_at is not None and row.status in _TIMED:
                    histogram = durations.get(row.task_name)
                    if histogram is None:
                        histogram = durations[row.task_name] = _Histogram(DURATION_BUCKETS)
                    histogram.observe(max(0.0, row.finished_at - row.started_at))

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        with self._lock:
            self._claim_size.observe(got)
            self._claim_seconds.observe(seconds)

    def executor_restarted(self, executor: int, exit_code: int | None) -> None:
        with self._lock:
            self._counters["executor_restarts"] += 1

    def heartbeat(self, alive: bool) -> None:
        with self._lock:
            self._counters["heartbeats"] += 1

    def rescued(self, workers: int, tasks: int) -> None:
        with self._lock:
            self._counters["rescued_tasks"] += tasks

    # ---------------------------------------------------------------- scrape

    def collect(self) -> Iterator[Metric]:
        """The Prometheus families, built from a copy of the counters taken under the lock."""
        core = _prometheus().core
        with self._lock:
            attempts = dict(self._attempts)
            durations = {task: (h.buckets(), h.total) for task, h in self._durations.items()}
            claim_size = (self._claim_size.buckets(), self._claim_size.total)
            claim_seconds = (self._claim_seconds.buckets(), self._claim_seconds.total)
            counters = dict(self._counters)
        family = core.CounterMetricFamily(
            "hyrex_like_attempts",
            "Attempts ended, by task, queue and status.",
            labels=["task", "queue", "status"],
        )
        for (task, queue, status), n in sorted(attempts.items()):
            family.add_metric([task, queue, status.value], n)
        yield family
        family = core.HistogramMetricFamily(
            "hyrex_like_attempt_duration_seconds",
            "Run time of completed and failed attempts, as measured in the executor.",
            labels=["task"],
        )
        for task, (buckets, total) in sorted(durations.items()):
            family.add_metric([task], buckets, total)
        yield family
        yield core.HistogramMetricFamily(
            "hyrex_like_claim_batch_size",
            "Tasks each claim statement got.",
            buckets=claim_size[0],
            sum_value=claim_size[1],
        )
        yield core.HistogramMetricFamily(
            "hyrex_like_claim_seconds",
            "Time of each claim statement.",
            buckets=claim_seconds[0],
            sum_value=claim_seconds[1],
        )
        for name, text in (
            ("executor_restarts", "Executor processes replaced after they died or were killed."),
            ("heartbeats", "Heartbeats written."),
            ("rescued_tasks", "Tasks of dead workers this worker queued again."),
        ):
            yield core.CounterMetricFamily(f"hyrex_like_{name}", text, value=counters[name])
        view = self._view
        if view is not None:
            try:
                in_flight, busy = view.in_flight(), view.running()
            except RuntimeError:  # the loop changed the ledger under us: skip this scrape
                pass
            else:
                yield core.GaugeMetricFamily(
                    "hyrex_like_in_flight",
                    "Attempts the worker holds: claimed, running, or ended and not written.",
                    value=in_flight,
                )
                yield core.GaugeMetricFamily(
                    "hyrex_like_busy_executors",
                    "Executors running at least one attempt now (with --async-concurrency one "
                    "runs many: see hyrex_like_in_flight).",
                    value=busy,
                )
        if self._worker_id is not None:
            info = core.GaugeMetricFamily(
                "hyrex_like_worker_info", "This worker's id (always 1).", labels=["worker_id"]
            )
            info.add_metric([str(self._worker_id)], 1)
            yield info


@dataclass(frozen=True)
class _ClusterSnapshot:
    queues: list[tuple[str, int, int, int, float | None, bool, float | None]]
    """(queue, ready, waiting, running, oldest ready age, paused, attempts per minute)"""
    workers_alive: int


class ClusterCollector:
    """Queue depth and age and live workers, read from the database at scrape time (at most
    once per ``cache_seconds``). A read that fails gives ``hyrex_like_cluster_up 0``."""

    def __init__(self, hy: HyrexRegistry, cache_seconds: float = 5.0) -> None:
        self.hy = hy
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, _ClusterSnapshot] | None = None

    def _read(self) -> _ClusterSnapshot:
        stats = self.hy.stats()
        return _ClusterSnapshot(
            [
                (
                    q.queue,
                    q.ready,
                    q.waiting,
                    q.running,
                    q.oldest_ready_seconds,
                    q.paused,
                    q.per_minute,
                )
                for q in stats.queues
            ],
            stats.workers_alive,
        )

    def snapshot(self) -> _ClusterSnapshot:
        with self._lock:  # one read at a time; scrapes meanwhile share its answer
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                self._cached = (now, self._read())
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        core = _prometheus().core
        try:
            snap = self.snapshot()
        except Exception as exc:  # the database is away: say so, and keep serving
            log.warning("cluster_metrics_failed", error=f"{type(exc).__name__}: {exc}")
            yield core.GaugeMetricFamily(
                "hyrex_like_cluster_up", "1 if the last read of the queues worked.", value=0
            )
            return
        yield core.GaugeMetricFamily(
            "hyrex_like_cluster_up", "1 if the last read of the queues worked.", value=1
        )
        tasks = core.GaugeMetricFamily(
            "hyrex_like_queue_tasks",
            "Tasks per queue: ready (due now), waiting (for their time), running.",
            labels=["queue", "state"],
        )
        oldest = core.GaugeMetricFamily(
            "hyrex_like_queue_oldest_ready_seconds",
            "Age of the oldest ready task of the queue (0: none ready).",
            labels=["queue"],
        )
        paused = core.GaugeMetricFamily(
            "hyrex_like_queue_paused", "1 if the queue is paused.", labels=["queue"]
        )
        rate = core.GaugeMetricFamily(
            "hyrex_like_queue_attempts_per_minute",
            "Attempts ended per minute over the last minutes.",
            labels=["queue"],
        )
        for queue, ready, waiting, running, age, is_paused, per_minute in snap.queues:
            tasks.add_metric([queue, "ready"], ready)
            tasks.add_metric([queue, "waiting"], waiting)
            tasks.add_metric([queue, RunStatus.RUNNING.value], running)
            oldest.add_metric([queue], age or 0.0)
            paused.add_metric([queue], int(is_paused))
            if per_minute is not None:
                rate.add_metric([queue], per_minute)
        yield from (tasks, oldest, paused, rate)
        yield core.GaugeMetricFamily(
            "hyrex_like_workers_alive",
            "Workers running (heartbeating).",
            value=snap.workers_alive,
        )


def cluster_registry(hy: HyrexRegistry, cache_seconds: float = 5.0) -> CollectorRegistry:
    """A private registry with the cluster's gauges of ``hy``'s database."""
    registry: CollectorRegistry = _prometheus().CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(hy, cache_seconds))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type, for a ``/metrics`` route of
    one's own (blocking: it may read the database; run it off an event loop)."""
    prometheus = _prometheus()
    return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST


def cluster_app(hy: HyrexRegistry, cache_seconds: float = 5.0) -> Any:
    """An ASGI app serving the cluster's gauges, to mount at ``/metrics`` (Starlette:
    ``Mount("/metrics", app=cluster_app(hy))``)."""
    return _prometheus().make_asgi_app(registry=cluster_registry(hy, cache_seconds))


@dataclass
class MetricsServer:
    """An HTTP server for ``/metrics`` on a daemon thread."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread (``port`` 0: a
    free port, read back from ``.port``). Raises OSError if the address is taken."""
    prometheus = _prometheus()
    server, thread = prometheus.start_http_server(
        port, addr=host, registry=registry if registry is not None else prometheus.REGISTRY
    )
    return MetricsServer(host, server.server_address[1], server, thread)
