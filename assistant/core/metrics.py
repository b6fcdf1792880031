"""Prometheus metrics of one server: connections, refused upgrades, turns, latency, errors,
micro-batches and the chat model's fallbacks.

Each Runtime owns its own registry, so several servers in one process (tests) never share
or collide on counters. `render` is what GET /metrics answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from fusion import MicroBatcher

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds from a message's arrival to the end of its reply: interactive up to a few
# seconds, and the tail under load.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Items per micro-batch: powers of two up to the largest configurable batch sizes.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Batchers = Callable[[], Sequence[MicroBatcher[Any, Any]]]
# Replies the chat model failed to write, by reason (timeout, error, empty).
Fallbacks = Callable[[], Mapping[str, int]]


class _BatcherCollector(Collector):
    """Reads the models' micro-batchers at scrape time (their stats live in fusion)."""

    def __init__(self, batchers: Batchers) -> None:
        self._batchers = batchers

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "assistant_batch_queue_depth",
            "Requests waiting for a model's next micro-batch",
            labels=["model"],
        )
        sizes = HistogramMetricFamily(
            "assistant_batch_size", "Items in each micro-batch", labels=["model"]
        )
        seconds = SummaryMetricFamily(
            "assistant_model_seconds",
            "Time in model forwards, one observation per micro-batch",
            labels=["model"],
        )
        # Exact sizes, which the power-of-two buckets blur: comparing the server's throughput
        # with the model's at the same batch sizes needs them (bench/chat.py). At most
        # max_batch series per model.
        exact = CounterMetricFamily(
            "assistant_batches", "Micro-batches run, by their exact size", labels=["model", "size"]
        )
        cpu = CounterMetricFamily(
            "assistant_model_cpu_seconds",
            "CPU time of the threads running a model's micro-batches",
            labels=["model"],
        )
        for batcher in self._batchers():
            stats = batcher.stats
            depth.add_metric([batcher.name], batcher.depth)
            counts = dict(stats.sizes)
            buckets: list[tuple[str, float]] = []
            for bound in BATCH_BUCKETS:
                buckets.append((str(bound), sum(n for size, n in counts.items() if size <= bound)))
            buckets.append(("+Inf", sum(counts.values())))
            sizes.add_metric([batcher.name], buckets, sum_value=stats.items)
            seconds.add_metric([batcher.name], count_value=stats.batches, sum_value=stats.busy_s)
            cpu.add_metric([batcher.name], stats.cpu_s)
            for size, n in sorted(counts.items()):
                exact.add_metric([batcher.name, str(size)], n)
        yield depth
        yield sizes
        yield seconds
        yield exact
        yield cpu


class _FallbackCollector(Collector):
    """Reads the reply generator's fallback counts at scrape time. The generator counts them
    itself: it may be shared by several servers in one process (tests), as the models are."""

    def __init__(self, fallbacks: Fallbacks) -> None:
        self._fallbacks = fallbacks

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "assistant_llm_fallbacks",
            "Replies the chat model failed to write (the composer's were sent), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self._fallbacks().items()):
            family.add_metric([reason], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.connections = Gauge(
            "assistant_connections", "Open WebSocket connections", ["route"], registry=registry
        )
        self.live_sessions = Gauge(
            "assistant_live_sessions", "Chat sessions held by this replica", registry=registry
        )
        self.messages = Counter(
            "assistant_messages", "Chat messages stored and acked", registry=registry
        )
        self.voice_notes = Counter(
            "assistant_voice_notes",
            "Chat voice notes transcribed and stored, or refused, by outcome (an error code)",
            ["outcome"],
            registry=registry,
        )
        self.turns = Counter("assistant_turns", "Turns the bot answered", registry=registry)
        self.turn_latency = Histogram(
            "assistant_turn_latency_seconds",
            "From a message's arrival to the end of its reply",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "assistant_errors",
            "Error frames sent, by route and code",
            ["route", "code"],
            registry=registry,
        )
        self.refused = Counter(
            "assistant_upgrades_refused",
            "WebSocket upgrades refused with an HTTP status before opening, by route and reason",
            ["route", "reason"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "assistant_redis_up",
            "1 while Redis is reachable; 0 when it is down or not configured",
            registry=registry,
        )
        self.store_cpu = Gauge(
            "assistant_store_thread_cpu_seconds",
            "CPU time of the SQLite store's thread in transactions (0 on other databases)",
            registry=registry,
        )
        self.draining = Gauge(
            "assistant_draining", "1 once SIGTERM started the drain", registry=registry
        )

    def watch(
        self,
        *,
        sessions: Callable[[], int],
        redis_up: Callable[[], bool],
        batchers: Batchers,
        store_cpu: Callable[[], float],
        fallbacks: Fallbacks,
    ) -> None:
        """Gauges read at scrape time from the objects that hold the state."""
        self.live_sessions.set_function(lambda: float(sessions()))
        self.redis_up.set_function(lambda: 1.0 if redis_up() else 0.0)
        self.store_cpu.set_function(store_cpu)
        self.registry.register(_BatcherCollector(batchers))
        self.registry.register(_FallbackCollector(fallbacks))

    def opened(self, route: str) -> None:
        self.connections.labels(route).inc()

    def closed(self, route: str) -> None:
        self.connections.labels(route).dec()

    def error(self, route: str, code: str) -> None:
        self.errors.labels(route, code).inc()

    def upgrade_refused(self, route: str, reason: str) -> None:
        self.refused.labels(route, reason).inc()

    def message_stored(self) -> None:
        self.messages.inc()

    def voice_note(self, outcome: str) -> None:
        """A chat voice note "stored", or refused with this error code."""
        self.voice_notes.labels(outcome).inc()

    def turn_answered(self, seconds: float) -> None:
        self.turns.inc()
        self.turn_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
