"""What bench/chat.py measures and its targets: the plan of a run and the report it fills."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Machine, load_average

TARGET_P50_RATIO = 1.3
TARGET_P99_RATIO = 2.0
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_CONNECTIONS = 2000
TARGET_CONNECTIONS_MB = 150.0
TARGET_STARTUP_S = 15.0


@dataclass(frozen=True, slots=True)
class Load:
    """1-minute load average when a phase started and ended."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Latency:
    turns: int
    warmup_turns: int
    turn_p50_ms: float
    turn_p99_ms: float
    turn_mean_ms: float
    ack_p50_ms: float
    model_p50_ms: float
    model_p99_ms: float
    encoder_p50_ms: float
    # Each stage of the model compute alone, one message per call (p50, ms).
    stages_p50_ms: dict[str, float]
    p50_ratio: float
    p99_ratio: float
    # Frames the client receives per turn: the ack, the reply's deltas, the reply.
    frames_per_turn: float
    # The same turns sent PACE_S after the previous reply (not back to back).
    paced_p50_ms: float
    paced_p99_ms: float
    # CPU per turn (ms): the server process, its event loop thread, the model alone here.
    server_cpu_ms: float
    event_loop_cpu_ms: float
    model_cpu_ms: float
    # Turns and model calls alternate: one load for both.
    load: Load
    stages_load: Load


@dataclass(frozen=True, slots=True)
class Throughput:
    sessions: int
    # Windows of load, each followed by the model alone at its batch sizes.
    rounds: int
    duration_s: float
    messages: int
    messages_per_s: float
    turn_p50_ms: float
    turn_p99_ms: float
    # Batches of the "turn" micro-batcher in the window: {size: count}.
    batch_sizes: dict[int, int]
    batch_sizes_exact: bool
    mean_batch: float
    # The server's worker: share of the window in model calls, and seconds per item there.
    server_model_busy: float
    server_model_s_per_item: float
    # _read_batch alone here at each observed size: median seconds per batch.
    model_batch_s: dict[int, float]
    model_messages_per_s: float
    ratio: float
    # CPU per message (ms): the server process, its event loop thread, the model alone here.
    server_cpu_ms: float
    event_loop_cpu_ms: float
    model_cpu_ms: float
    # ... and, of the server's, its model workers (in batches) and its store thread.
    server_model_cpu_ms: float
    store_cpu_ms: float
    load: Load


@dataclass(frozen=True, slots=True)
class Connections:
    connections: int
    rss_ready_mb: float
    rss_open_mb: float
    delta_mb: float
    per_connection_kb: float
    # Per connection after the first tenth were open (one-off allocations excluded).
    marginal_kb: float
    open_s: float
    load: Load


@dataclass(frozen=True, slots=True)
class Startup:
    migrate_s: float
    # Spawn to /readyz 200, and to "listening on" (speech models loaded too), per server.
    ready_s: list[float]
    listening_s: list[float]


@dataclass(frozen=True, slots=True)
class Sweep:
    """The model alone (`_read_batch`) at growing batch sizes: messages per second."""

    messages_per_s: dict[int, float]
    # The smallest size within PLATEAU_GAIN of the best rate: larger batches add no more.
    plateau: int


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    value: str
    ok: bool


@dataclass(slots=True)
class Report:
    quick: bool
    started_at: str
    machine: Machine
    config: dict[str, str]
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    latency: Latency | None = None
    throughput: Throughput | None = None
    connections: Connections | None = None
    startup: Startup | None = None
    sweep: Sweep | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextlib.contextmanager
def measured_load(into: list[Load]) -> Iterator[None]:
    start = load_average()
    try:
        yield
    finally:
        into.append(Load(start, load_average()))


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    device: str
    turns: int
    warmup_turns: int
    sessions: int
    warmup_s: float
    duration_s: float
    rounds: int
    connections: int
    profile: Path | None
    sweep: bool
