"""Prometheus metrics of one server (a registry per app, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Requests by endpoint and action, latencies, batch sizes, queue depth, client errors, upstream calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "safevlm_requests",
            "Answered requests by endpoint and gate action",
            ["endpoint", "action"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "safevlm_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "safevlm_queue_wait_seconds",
            "Time from queueing to the model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "safevlm_batch_size",
            "Rows per model call (score or generate)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("safevlm_queue_depth", "Requests waiting for the model loop", registry=self.registry)
        self.client_errors = Counter(
            "safevlm_client_errors", "Requests answered with a 4xx, by status", ["status"], registry=self.registry
        )
        self.cancelled = Counter(
            "safevlm_streams_cancelled", "Streams whose client left before the end", registry=self.registry
        )
        self.rejected = Counter(
            "safevlm_requests_rejected",
            "Requests turned away by a limit: queue_full (429), deadline (504)",
            ["reason"],
            registry=self.registry,
        )
        self.upstream = Counter(
            "safevlm_upstream_requests",
            "Requests forwarded to the upstream server",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
