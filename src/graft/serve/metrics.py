"""The server's Prometheus metrics, in a registry of its own (two apps in one process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "graft_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.queue_depth = Gauge("graft_queue_depth", "Requests waiting for the worker", registry=r)
        self.batch_size = Histogram(
            "graft_batch_size",
            "Rows in each prefill or decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "graft_time_to_first_token_seconds",
            "From submission to the first token",
            buckets=_SECONDS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "graft_decode_tokens_per_second",
            "Per request, after its first token",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.completion_tokens = Counter("graft_completion_tokens", "Tokens generated", registry=r)
        self.feature_cache_hits = Counter(
            "graft_vision_feature_cache_hits", "Images whose vision features came from the cache", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
