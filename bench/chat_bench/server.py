"""The server under test: its process (tests/support's spawner), CPU, memory and /metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import psutil
from common import BenchError
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server_process import ServerProcess, http_get

TURN_BATCHER = "turn"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True, slots=True)
class Cpu:
    total_s: float
    event_loop_s: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.total_s - other.total_s, self.event_loop_s - other.event_loop_s)

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.total_s + other.total_s, self.event_loop_s + other.event_loop_s)


class ServerUnderTest(ServerProcess):
    """`python server.py` on a port chosen here, so that /readyz can be polled from the start;
    with the process's memory and CPU, and its /metrics."""

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu(self) -> Cpu:
        """CPU seconds the server has used: all threads, and the event loop's (the main one)."""
        process = psutil.Process(self.pid)
        times = process.cpu_times()
        main = next((t for t in process.threads() if t.id == self.pid), None)
        return Cpu(
            times.user + times.system,
            main.user_time + main.system_time if main is not None else math.nan,
        )

    async def metrics(self) -> Samples:
        status, body = await http_get(self.port, "/metrics")
        if status != 200:
            raise BenchError(f"GET /metrics answered {status}")
        samples: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


@dataclass(frozen=True, slots=True)
class BatchCounts:
    sizes: dict[int, int]
    exact: bool
    model_s: float  # seconds in model calls, all batches
    batches: int
    model_cpu_s: float  # CPU seconds of the threads that ran them


def batch_counts(samples: Samples, model: str) -> BatchCounts:
    """The model's batches by size since the server started, from one /metrics scrape."""
    exact: dict[int, int] = {}
    buckets: dict[float, float] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if label.get("model") != model:
            continue
        if name == "assistant_batches_total":
            exact[int(label["size"])] = int(value)
        elif name == "assistant_batch_size_bucket":
            buckets[float(label["le"])] = value
    seconds = samples.get(("assistant_model_seconds_sum", frozenset({("model", model)})), 0.0)
    count = int(samples.get(("assistant_model_seconds_count", frozenset({("model", model)})), 0))
    cpu = samples.get(("assistant_model_cpu_seconds_total", frozenset({("model", model)})), 0.0)
    if exact:
        return BatchCounts(exact, True, seconds, count, cpu)
    # A server without the exact counter: each bucket's batches at its upper bound.
    sizes: dict[int, int] = {}
    below = 0.0
    for bound in sorted(b for b in buckets if math.isfinite(b)):
        in_bucket = int(buckets[bound] - below)
        if in_bucket:
            sizes[int(bound)] = in_bucket
        below = buckets[bound]
    return BatchCounts(sizes, False, seconds, count, cpu)


def counts_between(before: BatchCounts, after: BatchCounts) -> BatchCounts:
    sizes = {
        size: n - before.sizes.get(size, 0)
        for size, n in after.sizes.items()
        if n - before.sizes.get(size, 0) > 0
    }
    return BatchCounts(
        sizes,
        after.exact,
        after.model_s - before.model_s,
        after.batches - before.batches,
        after.model_cpu_s - before.model_cpu_s,
    )


def store_cpu_s(samples: Samples) -> float:
    """CPU seconds the server's SQLite store thread has spent, from one /metrics scrape."""
    return samples.get(("assistant_store_thread_cpu_seconds", frozenset()), 0.0)
