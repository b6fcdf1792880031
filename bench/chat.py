"""Chat performance against the real server process: latency, throughput, connections, startup.

One command measures, in one run, each figure next to the physical limit it is judged by:

1. **Latency.** One session, `--turns` messages sent back to back after a warm-up: the
   client-side time from sending `message` to receiving the final `reply`. In blocks of ten
   turns, alternating with them while the server is idle: the model compute the same
   messages need -- `FusionRuntime._read_batch` on one message (text encoder, fusion, intent
   and emotion heads) with a user's profile vector and the session's events, in a worker
   thread as the micro-batcher runs it -- loaded in this process with the server's settings
   and torch's default thread count (the server's). Targets: turn p50 <= 1.3x model p50,
   turn p99 <= 2x model p99. Also printed: the ack's latency, the same turns sent 100 ms
   after the previous reply (as a person types: the previous turn's writes are done), each
   model stage alone, and the CPU the server spends per turn (all threads, and its event
   loop thread) next to the model's.
2. **Throughput.** `--sessions` concurrent sessions, each sending its next message as soon
   as the previous reply arrives: messages per second over windows that add up to
   `--duration` seconds, and the "turn" micro-batcher's exact batch sizes in them (from
   `/metrics`). After each window, with the server idle, `_read_batch` alone on batches of
   each size that window produced, weighted by how often it occurred: the pure model
   throughput at the same batch sizes, the faster of one batch at a time on every core and
   two batches at once on one core each (what the server runs on a CPU). Target: server >=
   0.8x model. Also printed: the server's CPU per message, split by its own counters into
   its model workers, its store thread, its event loop and the rest, next to the model's
   CPU alone.
3. **Connections.** A fresh server: its resident memory (RSS) once ready, then after
   `--connections` idle connections that each said hello. Target: <= 150 MB for 2,000.
4. **Startup.** Seconds from spawning the server (database already migrated) to `/readyz`
   answering 200, for each server started. Target: <= 15 s. `server.py migrate` is timed
   apart. The knowledge base's embeddings are kept in the server's cache folder
   (`ASSISTANT_CACHE_DIR`, var/cache) by the run's first server at the latest, so the timed
   starts read them, as any restart does; a first start ever also embeds them.

The server runs as `python server.py` in its own process with a fresh, migrated SQLite
database (the default configuration) in a temporary directory; the clients are websockets
clients in this process. Two settings differ from the defaults, because the bench is one
client address sending as fast as it can: the message rate limits and the per-address
connection cap are off. Everything else (SQLite synchronous NORMAL, the grounded composer,
micro-batches of up to 32 with no wait) is the default and printed.

`--profile DIR` also samples the server with py-spy (`pip install py-spy`) during the
latency and throughput phases, writes the raw stacks there and prints where the server's
busy samples fall (model, tokenizer, SQL, JSON, websockets, event loop...) per message.
Sampling stops the server 100 times a second: take the other figures from a run without it.

    .venv/bin/python bench/chat.py                  # full run, about 4 minutes on 2 cores
    .venv/bin/python bench/chat.py --quick          # short run, same figures, less precise
    .venv/bin/python bench/chat.py --device cuda    # models on the GPU, in both processes
    .venv/bin/python bench/chat.py --quick --profile var/profile

It writes the figures to bench/results/chat.json (chat_quick.json with `--quick`; `--json`
to choose). The machine is shared and its speed drifts: every target is a ratio within one
run, and the 1-minute load average is recorded at the start and end of each phase.

Exit status 0 when the run completed, whether or not the targets were met; 1 when something
failed (the server did not start, an error frame, a timeout); 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Before anything imports transformers: an accidental model-hub call must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from chat_messages import MESSAGES  # noqa: E402
from machine import cpu_model, load_average  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, WebSocketException  # noqa: E402

from assistant import Models, Settings, load_models  # noqa: E402
from fusion import FuseRequest, TurnInput  # noqa: E402
from fusion.behaviour import Event  # noqa: E402

# torch's default, taken before a model worker changes its own thread's count.
DEFAULT_THREADS = torch.get_num_threads()

T = TypeVar("T")

RESULTS = ROOT / "bench" / "results"
RECV_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
TURN_BATCHER = "turn"

TARGET_P50_RATIO = 1.3
TARGET_P99_RATIO = 2.0
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_CONNECTIONS = 2000
TARGET_CONNECTIONS_MB = 150.0
TARGET_STARTUP_S = 15.0


# What a widget reports before its user writes (name, props, minutes ago): every session
# sends these after hello, and the model-only timings read the same ones.
EVENTS: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("page_view", {"page": "/cards"}, 30),
    ("search", {"topic": "card delivery"}, 25),
    ("card_ordered", {"card_type": "physical", "delivery": "standard"}, 20),
    (
        "card_payment",
        {"status": "declined", "channel": "online", "card_type": "physical", "currency": "EUR"},
        5,
    ),
)


class BenchError(RuntimeError):
    """The run could not complete; the message says why."""


# figures


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    usable_cores: int
    torch_threads: int
    device: str
    torch: str
    python: str


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


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s, dtype=np.float64), q) * 1000.0)


def load_averages() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


@contextlib.contextmanager
def measured_load(into: list[Load]) -> Iterator[None]:
    start = load_average()
    try:
        yield
    finally:
        into.append(Load(start, load_average()))


def describe_machine(models: Models) -> Machine:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    device = str(models.device)
    if models.device.type == "cuda":
        device = f"{device} ({torch.cuda.get_device_name(models.device)})"
    return Machine(
        cpu=cpu_model(),
        cores=cores,
        usable_cores=usable,
        torch_threads=torch.get_num_threads(),
        device=device,
        torch=torch.__version__,
        python=platform.python_version(),
    )


def raise_file_limit(needed: int) -> int:
    """Raise this process's open-file limit (the server inherits it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        raise BenchError(f"open-file limit {soft} is below the {needed} this run needs")
    return soft


# the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def http_get(port: int, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise BenchError(f"not an HTTP answer to GET {path}: {head[:80]!r}")
    return int(parts[1]), body


def server_env(db_url: str, device: str) -> dict[str, str]:
    return {
        **os.environ,
        "ASSISTANT_DB_URL": db_url,
        "ASSISTANT_DEVICE": device,
        # One client address sending as fast as replies come: the abuse guards would refuse it.
        "ASSISTANT_RATE_CONNECTION_MESSAGES": "0",
        "ASSISTANT_RATE_USER_MESSAGES": "0",
        "ASSISTANT_MAX_CONNECTIONS_PER_IP": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def migrate(env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "migrate"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"server.py migrate failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True, slots=True)
class Cpu:
    total_s: float
    event_loop_s: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.total_s - other.total_s, self.event_loop_s - other.event_loop_s)

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.total_s + other.total_s, self.event_loop_s + other.event_loop_s)


class ServerProcess:
    """`python server.py` on a port chosen here, so that /readyz can be polled from the start."""

    def __init__(
        self, process: asyncio.subprocess.Process, port: int, log: Path, spawned: float
    ) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.spawned = spawned
        self.url = f"ws://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, env: Mapping[str, str], log: Path) -> ServerProcess:
        port = free_port()
        with log.open("ab") as sink:
            spawned = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "server.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                cwd=ROOT,
                env=dict(env),
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
            )
        return cls(process, port, log, spawned)

    def _failed(self, why: str) -> BenchError:
        tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
        return BenchError(f"{why}; the end of {self.log}:\n{tail}")

    async def wait_ready(self) -> float:
        """Poll /readyz until it answers 200; seconds since spawning."""
        deadline = self.spawned + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.process.returncode is not None:
                raise self._failed(f"the server exited with {self.process.returncode}")
            with contextlib.suppress(OSError, TimeoutError):
                status, _ = await http_get(self.port, "/readyz", timeout_s=2.0)
                if status == 200:
                    return time.perf_counter() - self.spawned
            await asyncio.sleep(0.02)
        raise self._failed(f"/readyz did not answer 200 within {START_TIMEOUT_S:.0f} s")

    async def wait_listening(self) -> float:
        """Wait for the line the server prints once everything, speech models too, is loaded."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while line := (await stdout.readline()).decode():
                    if line.startswith("listening on "):
                        return time.perf_counter() - self.spawned
        except TimeoutError:
            raise self._failed("the server did not say it listens") from None
        await self.process.wait()
        raise self._failed(f"the server exited with {self.process.returncode}")

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

    async def stop(self, timeout_s: float = 30.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


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


# the client side


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Client:
    """One widget connection: hello, the events, then one message at a time."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self._sent = 0
        self.frames = 0  # received after hello

    @classmethod
    async def open(cls, url: str, name: str, *, events: bool = True) -> Client:
        try:
            ws = await connect(f"{url}/chat", open_timeout=RECV_TIMEOUT_S, ping_interval=None)
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise BenchError(f"could not connect to {url}/chat: {exc!r}") from exc
        client = cls(ws, name)
        await client.send({"type": "hello", "user": {"external_id": name}})
        frame = await client.recv()
        if frame["type"] != "welcome":
            raise BenchError(f"expected 'welcome' after hello, got {frame!r}")
        if events:
            now = datetime.now(UTC)
            items = [
                {
                    "id": f"{name}-ev{i}",
                    "name": n,
                    "at": iso(now - timedelta(minutes=m)),
                    "props": p,
                }
                for i, (n, p, m) in enumerate(EVENTS)
            ]
            await client.send({"type": "events", "id": f"{name}-events", "items": items})
            while (await client.recv())["type"] != "ack":
                pass
        return client

    async def send(self, frame: Mapping[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(frame))
        except ConnectionClosed as exc:
            raise BenchError(f"{self.name}: the server closed the connection: {exc}") from None

    async def recv(self) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
        except TimeoutError:
            raise BenchError(f"{self.name}: no frame within {RECV_TIMEOUT_S:.0f} s") from None
        except ConnectionClosed as exc:
            raise BenchError(f"{self.name}: the server closed the connection: {exc}") from None
        frame = json.loads(raw)
        if not isinstance(frame, dict) or "type" not in frame:
            raise BenchError(f"{self.name}: not a server frame: {raw!r}")
        if frame["type"] == "error":
            raise BenchError(
                f"{self.name}: error frame {frame.get('code')}: {frame.get('message')}"
            )
        return frame

    async def turn(self, text: str) -> tuple[float, float]:
        """Send one message, wait for its final reply: (seconds to the ack, to the reply)."""
        self._sent += 1
        client_id = f"m{self._sent}"
        payload = json.dumps({"type": "message", "id": client_id, "text": text})
        acked = math.nan
        started = time.perf_counter()
        try:
            await self.ws.send(payload)
        except ConnectionClosed as exc:
            raise BenchError(f"{self.name}: the server closed the connection: {exc}") from None
        while True:
            frame = await self.recv()
            self.frames += 1
            if frame["type"] == "reply":
                done = time.perf_counter() - started
                if math.isnan(acked):
                    raise BenchError(f"{self.name}: reply to {client_id} before its ack")
                return acked, done
            if frame["type"] == "ack" and frame.get("id") == client_id:
                acked = time.perf_counter() - started

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


def message(i: int) -> str:
    return MESSAGES[i % len(MESSAGES)]


# the models alone, in this process


class ModelBench:
    """The server's models loaded here, timed in one worker thread as the batcher runs them."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-bench")
        self.now = datetime.now(UTC)
        self.events = [Event(n, self.now - timedelta(minutes=m), p) for n, p, m in EVENTS]
        self.profile = self._profile()
        # What the server runs by default (ASSISTANT_BATCH_WORKERS unset).
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self.workers = 2 if models.device.type == "cpu" and usable >= 2 else 1

    def _profile(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A user's profile as the server holds it after a few turns of this conversation."""
        state = None
        for text in MESSAGES[:4]:
            reading = self.models._read_batch([TurnInput(text, None, self.events, self.now)])[0]
            state = self.models.update_profile(state, reading.fused, 60.0)
        assert state is not None
        return state.vector

    def turn_input(self, text: str) -> TurnInput:
        return TurnInput(text, self.profile, self.events, self.now)

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def time_turns(self, texts: Sequence[str]) -> tuple[list[float], float]:
        """Seconds of `_read_batch` on one message, per message; and the CPU seconds of all."""
        read = self.models._read_batch
        samples = []
        cpu = 0.0
        for text in texts:
            turn = self.turn_input(text)
            cpu_started = time.process_time()
            started = time.perf_counter()
            read([turn])
            samples.append(time.perf_counter() - started)
            cpu += time.process_time() - cpu_started
        return samples, cpu

    def time_stages(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Each stage of a turn's model compute alone, one message per call."""
        models = self.models
        encoder = models.text_encoder
        stages: dict[str, list[float]] = {
            "tokenizer": [],
            "text encoder (tokenizer + forward)": [],
            "fusion": [],
            "intent + emotion heads": [],
        }
        for text in texts:
            started = time.perf_counter()
            encoder.tokenizer(
                [text],
                padding=True,
                truncation=True,
                max_length=encoder.config.max_tokens,
                return_tensors="pt",
            )
            stages["tokenizer"].append(time.perf_counter() - started)
            started = time.perf_counter()
            vector = encoder.encode([text])
            stages["text encoder (tokenizer + forward)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            models.fusion.fuse_many([FuseRequest(vector[0], None, self.events, self.now)])
            stages["fusion"].append(time.perf_counter() - started)
            started = time.perf_counter()
            models.understanding.predict_many(vector, [self.profile], [None], [text])
            stages["intent + emotion heads"].append(time.perf_counter() - started)
        return stages

    def time_batch(self, size: int, min_s: float, min_reps: int) -> tuple[float, float]:
        """Seconds per batch of `_read_batch` on `size` different messages, and its CPU
        seconds: the better of one batch at a time on every core and, as the server may run
        them, `workers` batches at once (the server's default), each on its share of the cores."""
        batch = [self.turn_input(message(i)) for i in range(size)]
        alone = self._batches_at_once(batch, 1, min_s, min_reps)
        if size == 1 or self.workers < 2:
            return alone
        together = self._batches_at_once(batch, self.workers, min_s, min_reps)
        return min(alone, together)

    def _batches_at_once(
        self, batch: list[TurnInput], workers: int, min_s: float, min_reps: int
    ) -> tuple[float, float]:
        """Median wall seconds per batch with `workers` threads each running batches back to
        back on DEFAULT_THREADS // workers torch threads; mean CPU seconds per batch."""
        threads = max(1, DEFAULT_THREADS // workers)
        read = self.models._read_batch

        def worker(samples: list[float]) -> None:
            torch.set_num_threads(threads)
            read(batch)
            spent = 0.0
            while len(samples) < min_reps or spent < min_s:
                started = time.perf_counter()
                read(batch)
                samples.append(time.perf_counter() - started)
                spent += samples[-1]

        per_worker: list[list[float]] = [[] for _ in range(workers)]
        cpu_started = time.process_time()
        pool = [threading.Thread(target=worker, args=(s,)) for s in per_worker]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        cpu_s = time.process_time() - cpu_started
        torch.set_num_threads(DEFAULT_THREADS)
        # The CPU time covers each worker's untimed first batch too.
        done = sum(len(s) for s in per_worker) + workers
        # `workers` batches run in the time of one: each batch's share of the wall time.
        return float(np.median([x for s in per_worker for x in s])) / workers, cpu_s / done


# py-spy


class Sampler:
    """py-spy recording the server during one phase (raw collapsed stacks, idle excluded)."""

    RATE = 100

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self._process = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.RATE),
                "--format",
                "raw",
                "--threads",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# Where a sampled stack's time goes. Libraries first, wherever they are in the stack, the
# highest-ranked winning: a JSON encoder called by the session counts as JSON, SQLAlchemy
# called by the store as SQL. A stack in none of them belongs to its innermost frame in the
# project (session logic) or in asyncio (event loop): every stack on the event loop thread
# starts in server.py's main. Paths as py-spy prints them (relative to sys.path).
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tokenizer", ("tokenizers/", "transformers/tokenization_")),
    ("model", ("torch/", "transformers/", "fusion/", "numpy/", "sklearn/")),
    ("SQL/ORM", ("sqlalchemy/", "aiosqlite/", "sqlite3/", "profiles/", "greenlet/")),
    ("JSON", ("json/", "assistant/chat/protocol.py")),
    ("websockets", ("websockets/",)),
    (
        "reply composer",
        (
            "assistant/replies/composer.py",
            "assistant/replies/generation.py",
            "assistant/replies/retrieval.py",
            "assistant/replies/deltas.py",
            "assistant/replies/prompting.py",
            "assistant/replies/knowledge_base.py",
            "assistant/replies/profile_summary.py",
            "langchain_core/",
        ),
    ),
    ("logging and metrics", ("logging/", "prometheus_client/", "assistant/core/logs.py")),
)
# The batcher and the runtime's submit run on the event loop: their frames are not the model.
NOT_MODEL = ("fusion/batcher.py", "fusion/serving.py")
OWN_CODE = ("assistant/", "server.py")
EVENT_LOOP = ("asyncio/", "selectors.py", "concurrent/", "threading.py", "queue.py")
# Waiting, not working: py-spy's idle detection misses these blocking calls into C (an
# empty queue's get, epoll). aiosqlite's line 59 is its thread's wait for the next call;
# its line 158 is a statement's `await` on that thread, which py-spy shows on the event loop
# thread (through SQLAlchemy's greenlet) while the loop itself waits in epoll: the thread's
# CPU time from /proc only agrees with the samples once these are left out.
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "Connection._execute (aiosqlite/core.py:158)",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)


def _path(frame: str) -> str:
    _, _, where = frame.rpartition(" (")
    return where.rstrip(")").rpartition(":")[0]


def _category(frames: Sequence[str]) -> str:
    if frames and frames[-1].startswith(IDLE_LEAVES):
        return "idle"
    paths = [_path(frame) for frame in frames]
    best = len(LIBRARIES)
    for path in paths:
        for rank, (_, prefixes) in enumerate(LIBRARIES[:best]):
            if path.startswith(prefixes) and not (rank == 1 and path.startswith(NOT_MODEL)):
                best = rank
                break
    if best < len(LIBRARIES):
        return LIBRARIES[best][0]
    for path in reversed(paths):
        if path.startswith(OWN_CODE) or path.startswith(NOT_MODEL):
            return "session logic"
        if path.startswith(EVENT_LOOP):
            return "event loop"
    return "other"


def _thread_kind(thread: str) -> str:
    name = thread.partition(": ")[2] or thread
    if name == "MainThread":
        return "event loop thread"
    if name.startswith(f"{TURN_BATCHER}_"):
        return "model worker (turn batcher)"
    if name.startswith("asyncio_"):
        return "asyncio.to_thread workers"
    return "other threads (aiosqlite, ...)"


def summarise_profile(path: Path, messages: int) -> dict[str, Any]:
    """Busy samples per category and per thread, as shares. Per message in the JSON too, but
    a sample counts whenever a thread is not idle -- also while it waits for the GIL or for
    a core -- so the CPU per message comes from the process's own accounting instead."""
    by_category: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        category = _category(frames)
        if category == "idle":
            continue
        by_category[category] += count
        by_thread[_thread_kind(thread)] += count
        total += count

    def table(counts: Counter[str]) -> dict[str, dict[str, float]]:
        return {
            name: {
                "share": n / total if total else 0.0,
                "ms_per_message": n * 1000.0 / Sampler.RATE / max(1, messages),
            }
            for name, n in counts.most_common()
        }

    return {
        "samples": total,
        "messages": messages,
        "categories": table(by_category),
        "threads": table(by_thread),
        "raw": str(path),
    }


# the phases


# Turns and model calls alternate in blocks of this many messages, so that both see the
# same machine: other work on a shared machine comes and goes within a run.
BLOCK = 10
# The pause before each paced turn: longer than a turn's writes after its reply.
PACE_S = 0.1


async def latency_phase(
    server: ServerProcess, bench: ModelBench, plan: Plan, report: Report
) -> None:
    turns, warmup = plan.turns, plan.warmup_turns
    loads: list[Load] = []
    client = await Client.open(server.url, f"latency-{uuid.uuid4().hex[:8]}")
    acks: list[float] = []
    replies: list[float] = []
    paced: list[float] = []
    frames = 0
    model: list[float] = []
    server_cpu = Cpu(0.0, 0.0)
    model_cpu = 0.0
    texts = [message(warmup + i) for i in range(turns)]
    sampler: Sampler | None = None
    try:
        for i in range(warmup):
            await client.turn(message(i))
        await bench.run(functools.partial(bench.time_turns, [message(i) for i in range(warmup)]))
        sampler = start_sampler(plan, server, "latency")
        frames_before = client.frames
        with measured_load(loads):
            for first in range(0, turns, BLOCK):
                block = texts[first : first + BLOCK]
                cpu_started = server.cpu()
                for text in block:
                    ack, reply = await client.turn(text)
                    acks.append(ack)
                    replies.append(reply)
                # The server writes the last reply's turn after sending it: let it finish.
                await asyncio.sleep(0.05)
                server_cpu += server.cpu() - cpu_started
                frames += client.frames - frames_before
                block_model, block_cpu = await bench.run(functools.partial(bench.time_turns, block))
                model += block_model
                model_cpu += block_cpu
                # The same messages with a pause before each, as a person types: the previous
                # turn's writes are done when the next message arrives.
                for text in block:
                    await asyncio.sleep(PACE_S)
                    paced.append((await client.turn(text))[1])
                frames_before = client.frames
    finally:
        stop_sampler(sampler, "latency", len(replies), report)
        await client.close()
    with measured_load(loads):
        stages = await bench.run(functools.partial(bench.time_stages, texts))
    stage_p50 = {name: percentile_ms(samples, 50) for name, samples in stages.items()}
    turn_p50, turn_p99 = percentile_ms(replies, 50), percentile_ms(replies, 99)
    model_p50, model_p99 = percentile_ms(model, 50), percentile_ms(model, 99)
    report.latency = Latency(
        turns=turns,
        warmup_turns=warmup,
        turn_p50_ms=turn_p50,
        turn_p99_ms=turn_p99,
        turn_mean_ms=float(np.mean(replies) * 1000.0),
        ack_p50_ms=percentile_ms(acks, 50),
        model_p50_ms=model_p50,
        model_p99_ms=model_p99,
        encoder_p50_ms=stage_p50["text encoder (tokenizer + forward)"],
        stages_p50_ms=stage_p50,
        p50_ratio=turn_p50 / model_p50,
        p99_ratio=turn_p99 / model_p99,
        frames_per_turn=frames / turns,
        paced_p50_ms=percentile_ms(paced, 50),
        paced_p99_ms=percentile_ms(paced, 99),
        server_cpu_ms=server_cpu.total_s * 1000.0 / turns,
        event_loop_cpu_ms=server_cpu.event_loop_s * 1000.0 / turns,
        model_cpu_ms=model_cpu * 1000.0 / turns,
        load=loads[0],
        stages_load=loads[1],
    )


async def throughput_phase(
    server: ServerProcess, bench: ModelBench, plan: Plan, report: Report
) -> None:
    """Rounds of load on the server, each followed (server idle) by the model alone at the
    batch sizes the round produced, so that both see the same machine."""
    run_id = uuid.uuid4().hex[:6]
    names = [f"load-{run_id}-{i}" for i in range(plan.sessions)]
    clients = await open_clients(server.url, names, 16)
    latencies: list[float] = []
    sizes: Counter[int] = Counter()
    exact = True
    elapsed = server_model_s = model_s = model_cpu_s = server_model_cpu_s = store_s = 0.0
    server_cpu = Cpu(0.0, 0.0)
    batch_s: dict[int, list[float]] = {}
    started = load_average()
    sampler: Sampler | None = None
    messages = 0
    try:
        for round_ in range(plan.rounds):
            warmup = plan.warmup_s if round_ == 0 else 1.0
            if round_ == plan.rounds - 1:
                sampler = start_sampler(plan, server, "throughput")
            window = await load_round(server, clients, warmup, plan.duration_s / plan.rounds)
            if sampler is not None:
                stop_sampler(sampler, "throughput", len(window.latencies), report)
                sampler = None
            messages += len(window.latencies)
            latencies += window.latencies
            elapsed += window.seconds
            sizes.update(window.batches.sizes)
            exact = exact and window.batches.exact
            server_model_s += window.batches.model_s
            server_model_cpu_s += window.batches.model_cpu_s
            store_s += window.store_cpu_s
            server_cpu += window.cpu
            for size, count in window.batches.sizes.items():
                seconds, cpu_s = await bench.run(
                    functools.partial(
                        bench.time_batch,
                        size,
                        min_s=0.1 if plan.quick else 0.25,
                        min_reps=2 if plan.quick else 3,
                    )
                )
                batch_s.setdefault(size, []).append(seconds)
                model_s += seconds * count
                model_cpu_s += cpu_s * count
    finally:
        if sampler is not None:
            stop_sampler(sampler, "throughput", 0, report)
        await asyncio.gather(*(c.close() for c in clients))
    items = sum(size * n for size, n in sizes.items())
    rate = messages / elapsed
    model_rate = items / model_s if model_s else math.nan
    report.throughput = Throughput(
        sessions=plan.sessions,
        rounds=plan.rounds,
        duration_s=elapsed,
        messages=messages,
        messages_per_s=rate,
        turn_p50_ms=percentile_ms(latencies, 50) if latencies else math.nan,
        turn_p99_ms=percentile_ms(latencies, 99) if latencies else math.nan,
        batch_sizes=dict(sorted(sizes.items())),
        batch_sizes_exact=exact,
        mean_batch=items / max(1, sum(sizes.values())),
        server_model_busy=server_model_s / elapsed,
        server_model_s_per_item=server_model_s / items if items else math.nan,
        model_batch_s={size: float(np.median(s)) for size, s in sorted(batch_s.items())},
        model_messages_per_s=model_rate,
        ratio=rate / model_rate if model_rate else math.nan,
        server_cpu_ms=server_cpu.total_s * 1000.0 / max(1, messages),
        event_loop_cpu_ms=server_cpu.event_loop_s * 1000.0 / max(1, messages),
        model_cpu_ms=model_cpu_s * 1000.0 / max(1, items),
        server_model_cpu_ms=server_model_cpu_s * 1000.0 / max(1, items),
        store_cpu_ms=store_s * 1000.0 / max(1, messages),
        load=Load(started, load_average()),
    )


@dataclass(frozen=True, slots=True)
class Window:
    latencies: list[float]  # of the replies that arrived in the window
    seconds: float
    batches: BatchCounts
    cpu: Cpu  # the server's, in the window
    store_cpu_s: float  # its store thread's, in the window


async def load_round(
    server: ServerProcess, clients: Sequence[Client], warmup_s: float, duration_s: float
) -> Window:
    """Every client sends its next message as soon as its reply arrives, for `warmup_s`, then
    for a `duration_s` window; the window's replies and turn batches."""
    stop = asyncio.Event()
    done: list[tuple[float, float]] = []  # (perf_counter at the reply, seconds)

    async def chat(client: Client, offset: int) -> None:
        i = offset
        while not stop.is_set():
            _, seconds = await client.turn(message(i))
            done.append((time.perf_counter(), seconds))
            i += 1

    tasks = [asyncio.create_task(chat(c, 7 * n)) for n, c in enumerate(clients)]
    try:
        await asyncio.sleep(warmup_s)
        before = await server.metrics()
        cpu_before = server.cpu()
        start = time.perf_counter()
        await asyncio.sleep(duration_s)
        end = time.perf_counter()
        cpu = server.cpu() - cpu_before
        after = await server.metrics()
        stop.set()
        # Each client finishes its turn in flight; the server is idle once they have.
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The server's last writes of the round commit after its replies.
    await asyncio.sleep(0.2)
    return Window(
        [seconds for at, seconds in done if start <= at <= end],
        end - start,
        counts_between(batch_counts(before, TURN_BATCHER), batch_counts(after, TURN_BATCHER)),
        cpu,
        store_cpu_s(after) - store_cpu_s(before),
    )


async def open_clients(
    url: str, names: Sequence[str], at_once: int, *, events: bool = True
) -> list[Client]:
    """Open a client per name, `at_once` handshakes at a time."""
    gate = asyncio.Semaphore(at_once)

    async def one(name: str) -> Client:
        async with gate:
            return await Client.open(url, name, events=events)

    return list(await asyncio.gather(*(one(n) for n in names)))


async def connections_phase(server: ServerProcess, count: int, report: Report) -> None:
    loads: list[Load] = []
    # Let the start-up's last allocations and threads settle before the baseline.
    await asyncio.sleep(3.0)
    ready = server.rss_bytes()
    clients: list[Client] = []
    tenth = max(1, count // 10)
    with measured_load(loads):
        started = time.perf_counter()
        try:
            names = [f"idle-{i}" for i in range(count)]
            clients += await open_clients(server.url, names[:tenth], 32, events=False)
            await asyncio.sleep(1.0)
            after_tenth = server.rss_bytes()
            clients += await open_clients(server.url, names[tenth:], 32, events=False)
            opened = time.perf_counter() - started
            await asyncio.sleep(3.0)
            full = server.rss_bytes()
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    mb = 1024.0 * 1024.0
    report.connections = Connections(
        connections=count,
        rss_ready_mb=ready / mb,
        rss_open_mb=full / mb,
        delta_mb=(full - ready) / mb,
        per_connection_kb=(full - ready) / count / 1024.0,
        marginal_kb=(full - after_tenth) / max(1, count - tenth) / 1024.0,
        open_s=opened,
        load=loads[0],
    )


def configuration(env: Mapping[str, str]) -> dict[str, str]:
    settings = Settings.from_env(env)
    generation = settings.generation
    composer = "grounded composer (no LLM)" if generation.llm == "none" else generation.llm
    return {
        "database": f"SQLite (WAL, synchronous {settings.sqlite_synchronous}), fresh file",
        "composer": composer,
        "batching": (
            f"max batch {settings.batch_size}, wait {settings.batch_wait_ms:g} ms, "
            f"queue {settings.batch_queue}"
        ),
        "model device setting": settings.device,
        "not default": (
            "message rate limits off (ASSISTANT_RATE_*_MESSAGES=0), per-address connection "
            "cap off (ASSISTANT_MAX_CONNECTIONS_PER_IP=0)"
        ),
        "server": "python server.py in its own process; clients: websockets in the bench",
    }


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


async def bench(plan: Plan) -> Report:
    raise_file_limit(plan.connections + 1024)
    load_start = load_averages()
    settings = Settings.from_env({"ASSISTANT_DEVICE": plan.device})
    try:
        models = load_models(settings)
    except Exception as exc:
        raise BenchError(f"could not load the models on {plan.device!r}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        env = server_env(f"sqlite+aiosqlite:///{Path(tmp) / 'assistant.db'}", plan.device)
        report = Report(
            quick=plan.quick,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=describe_machine(models),
            config=configuration(env),
            load_start=load_start,
        )
        model_bench = ModelBench(models)
        try:
            await run_phases(plan, env, Path(tmp), model_bench, report)
        finally:
            model_bench.close()
    report.load_end = load_averages()
    report.verdicts = verdicts(report)
    return report


async def run_phases(
    plan: Plan, env: Mapping[str, str], tmp: Path, bench: ModelBench, report: Report
) -> None:
    migrate_s = await asyncio.to_thread(migrate, env)
    ready: list[float] = []
    listening: list[float] = []
    server = await ServerProcess.spawn(env, tmp / "server-1.log")
    try:
        ready.append(await server.wait_ready())
        listening.append(await server.wait_listening())
        await latency_phase(server, bench, plan, report)
        await throughput_phase(server, bench, plan, report)
    finally:
        await server.stop()
    server = await ServerProcess.spawn(env, tmp / "server-2.log")
    try:
        ready.append(await server.wait_ready())
        listening.append(await server.wait_listening())
        await connections_phase(server, plan.connections, report)
    finally:
        await server.stop()
    report.startup = Startup(migrate_s=migrate_s, ready_s=ready, listening_s=listening)
    if plan.sweep or bench.models.device.type == "cuda":
        report.sweep = await sweep(bench, plan.quick)


SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLATEAU_GAIN = 0.05


async def sweep(bench: ModelBench, quick: bool) -> Sweep:
    rates: dict[int, float] = {}
    for size in SWEEP_SIZES:
        seconds, _ = await bench.run(
            functools.partial(bench.time_batch, size, min_s=0.2 if quick else 0.5, min_reps=3)
        )
        rates[size] = size / seconds
    # Noise on a shared machine makes single steps unreliable: the smallest size that comes
    # within PLATEAU_GAIN of the best rate.
    best = max(rates.values())
    plateau = min(size for size, rate in rates.items() if rate >= best * (1.0 - PLATEAU_GAIN))
    return Sweep(rates, plateau)


def start_sampler(plan: Plan, server: ServerProcess, phase: str) -> Sampler | None:
    if plan.profile is None:
        return None
    plan.profile.mkdir(parents=True, exist_ok=True)
    return Sampler(server.pid, plan.profile / f"{phase}.raw")


def stop_sampler(sampler: Sampler | None, phase: str, messages: int, report: Report) -> None:
    if sampler is None:
        return
    sampler.stop()
    if sampler.out.exists():
        report.profile[phase] = summarise_profile(sampler.out, messages)


def verdicts(report: Report) -> list[Verdict]:
    out: list[Verdict] = []
    lat = report.latency
    if lat is not None:
        out.append(
            Verdict(
                f"turn p50 <= {TARGET_P50_RATIO}x model p50",
                f"{lat.p50_ratio:.3f}x ({lat.turn_p50_ms:.1f} / {lat.model_p50_ms:.1f} ms)",
                lat.p50_ratio <= TARGET_P50_RATIO,
            )
        )
        out.append(
            Verdict(
                f"turn p99 <= {TARGET_P99_RATIO:g}x model p99",
                f"{lat.p99_ratio:.3f}x ({lat.turn_p99_ms:.1f} / {lat.model_p99_ms:.1f} ms)",
                lat.p99_ratio <= TARGET_P99_RATIO,
            )
        )
    thr = report.throughput
    if thr is not None:
        out.append(
            Verdict(
                f"throughput >= {TARGET_THROUGHPUT_RATIO}x batched model",
                f"{thr.ratio:.3f}x ({thr.messages_per_s:.1f} / {thr.model_messages_per_s:.1f} "
                "msg/s)",
                thr.ratio >= TARGET_THROUGHPUT_RATIO,
            )
        )
    con = report.connections
    if con is not None:
        scaled = con.delta_mb * TARGET_CONNECTIONS / con.connections
        value = f"{con.delta_mb:.1f} MB for {con.connections}"
        if con.connections != TARGET_CONNECTIONS:
            value += f" ({scaled:.1f} MB scaled to {TARGET_CONNECTIONS})"
        out.append(
            Verdict(
                f"{TARGET_CONNECTIONS} idle connections <= {TARGET_CONNECTIONS_MB:g} MB",
                value,
                scaled <= TARGET_CONNECTIONS_MB,
            )
        )
    start = report.startup
    if start is not None:
        worst = max(start.ready_s)
        out.append(
            Verdict(
                f"ready <= {TARGET_STARTUP_S:g} s after start",
                f"{worst:.1f} s (slowest of {len(start.ready_s)} starts)",
                worst <= TARGET_STARTUP_S,
            )
        )
    return out


# output


def render(report: Report) -> str:
    lines: list[str] = []

    def section(title: str) -> None:
        lines.append("")
        lines.append(title)

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<34} {value}")

    def load(phase: Load) -> str:
        return f"load {phase.start:.2f} -> {phase.end:.2f}"

    m = report.machine
    kind = "quick run" if report.quick else "full run"
    if report.profile:
        kind += ", sampled by py-spy (which slows the server: read the shares, not the times)"
    lines.append(f"bench/chat.py, {kind}, {report.started_at}")
    row("machine", f"{m.cpu}, {m.cores} cores ({m.usable_cores} usable)")
    row("device", f"{m.device}, torch {m.torch}, {m.torch_threads} threads, Python {m.python}")
    start, end = report.load_start, report.load_end
    row(
        "load average (1/5/15 min)",
        f"start {start[0]:.2f} {start[1]:.2f} {start[2]:.2f}, "
        f"end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}",
    )
    for name, value in report.config.items():
        row(name, value)

    lat = report.latency
    if lat is not None:
        section(f"latency: one session, {lat.turns} turns after {lat.warmup_turns} warm-up")
        row(
            "turn p50 / p99 / mean",
            f"{lat.turn_p50_ms:.2f} / {lat.turn_p99_ms:.2f} / "
            f"{lat.turn_mean_ms:.2f} ms   ({load(lat.load)})",
        )
        row("ack p50", f"{lat.ack_p50_ms:.2f} ms   ({lat.frames_per_turn:.1f} frames a turn)")
        row(
            f"paced turns p50 / p99 ({PACE_S * 1000:.0f} ms pause)",
            f"{lat.paced_p50_ms:.2f} / {lat.paced_p99_ms:.2f} ms   (ratios "
            f"{lat.paced_p50_ms / lat.model_p50_ms:.2f} / "
            f"{lat.paced_p99_ms / lat.model_p99_ms:.2f})",
        )
        row(
            "model compute p50 / p99",
            f"{lat.model_p50_ms:.2f} / {lat.model_p99_ms:.2f} ms   "
            "(_read_batch, one message, alternating with the turns)",
        )
        for stage, ms in lat.stages_p50_ms.items():
            row(f"  {stage} p50", f"{ms:.2f} ms   ({load(lat.stages_load)})")
        row(
            "CPU per turn: server / its loop",
            f"{lat.server_cpu_ms:.2f} / {lat.event_loop_cpu_ms:.2f} ms; model alone "
            f"{lat.model_cpu_ms:.2f} ms",
        )
        row("turn p50 / model p50", f"{lat.p50_ratio:.2f}   (target <= {TARGET_P50_RATIO})")
        row("turn p99 / model p99", f"{lat.p99_ratio:.2f}   (target <= {TARGET_P99_RATIO:g})")

    thr = report.throughput
    if thr is not None:
        section(
            f"throughput: {thr.sessions} sessions, {thr.rounds} windows, "
            f"{thr.duration_s:.1f} s in all"
        )
        row(
            "server",
            f"{thr.messages_per_s:.1f} msg/s ({thr.messages} replies; "
            f"p50 {thr.turn_p50_ms:.0f} ms, p99 {thr.turn_p99_ms:.0f} ms; {load(thr.load)})",
        )
        exact = "exact" if thr.batch_sizes_exact else "bucket upper bounds"
        sizes = ", ".join(f"{s}x{n}" for s, n in thr.batch_sizes.items())
        row(f"turn batches (size x count, {exact})", sizes or "none")
        row("mean batch", f"{thr.mean_batch:.1f}")
        row(
            "server model workers",
            f"busy {thr.server_model_busy:.0%} of the window (summed), "
            f"{thr.server_model_s_per_item * 1000:.2f} ms per message",
        )
        row(
            "batched model alone",
            f"{thr.model_messages_per_s:.1f} msg/s at those sizes, after each window "
            "(the faster of one batch at a time and the server's batches in flight)",
        )
        row(
            "CPU per message: server / its loop",
            f"{thr.server_cpu_ms:.2f} / {thr.event_loop_cpu_ms:.2f} ms; model alone "
            f"{thr.model_cpu_ms:.2f} ms",
        )
        rest = (
            thr.server_cpu_ms - thr.server_model_cpu_ms - thr.store_cpu_ms - thr.event_loop_cpu_ms
        )
        row(
            "  of the server's: models / store",
            f"{thr.server_model_cpu_ms:.2f} / {thr.store_cpu_ms:.2f} ms; the rest {rest:.2f} ms",
        )
        row("server / model", f"{thr.ratio:.2f}   (target >= {TARGET_THROUGHPUT_RATIO})")

    con = report.connections
    if con is not None:
        section(f"connections: {con.connections} idle after hello, fresh server")
        row(
            "server RSS ready / with connections",
            f"{con.rss_ready_mb:.1f} / {con.rss_open_mb:.1f} MB   ({load(con.load)})",
        )
        row(
            "difference",
            f"{con.delta_mb:.1f} MB, {con.per_connection_kb:.1f} kB per connection "
            f"({con.marginal_kb:.1f} kB after the first tenth)",
        )
        row("time to open them", f"{con.open_s:.1f} s")

    st = report.startup
    if st is not None:
        section("startup (database already migrated)")
        row("spawn -> /readyz 200", ", ".join(f"{s:.1f} s" for s in st.ready_s))
        row("spawn -> 'listening' (speech too)", ", ".join(f"{s:.1f} s" for s in st.listening_s))
        row("server.py migrate", f"{st.migrate_s:.1f} s (fresh database, separate process)")

    for phase, prof in report.profile.items():
        section(
            f"py-spy, {phase} phase: {prof['samples']} busy samples, {prof['messages']} "
            "messages (share of the samples)"
        )
        for name, value in prof["categories"].items():
            row(name, f"{value['share']:4.0%}")
        for name, value in prof["threads"].items():
            row(f"[{name}]", f"{value['share']:4.0%}")

    if report.sweep is not None:
        section("model alone by batch size (_read_batch, messages/s)")
        for size, rate in report.sweep.messages_per_s.items():
            row(f"batch {size}", f"{rate:.1f}")
        row(
            "throughput stops growing at",
            f"batch {report.sweep.plateau} (within {PLATEAU_GAIN:.0%} of the best)",
        )

    section("verdict")
    for v in report.verdicts:
        row(v.target, f"{v.value}: {'ok' if v.ok else 'MISSED'}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/chat.py",
        description="Chat latency, throughput, connections and startup of the server process.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run with the same figures")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="model device (auto)"
    )
    parser.add_argument("--turns", type=int, help="latency turns (200; quick 60)")
    parser.add_argument("--sessions", type=int, default=64, help="concurrent sessions (64)")
    parser.add_argument("--duration", type=float, help="throughput window, s (20; quick 6)")
    parser.add_argument("--connections", type=int, help="idle connections (2000; quick 500)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the figures")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="sample the server with py-spy into DIR"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time the model alone at batch sizes 1 to 256 (always on CUDA)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quick: bool = args.quick
    plan = Plan(
        quick=quick,
        device=args.device,
        turns=args.turns or (60 if quick else 200),
        warmup_turns=10 if quick else 20,
        sessions=args.sessions,
        warmup_s=2.0 if quick else 5.0,
        duration_s=args.duration or (6.0 if quick else 20.0),
        rounds=2 if quick else 4,
        connections=args.connections or (500 if quick else TARGET_CONNECTIONS),
        profile=args.profile,
        sweep=args.sweep,
    )
    if plan.turns < 1 or plan.sessions < 1 or plan.duration_s <= 0 or plan.connections < 1:
        parser.error("--turns, --sessions, --duration and --connections must be positive")
    try:
        report = asyncio.run(bench(plan))
    except BenchError as exc:
        print(f"bench/chat.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/chat.py: interrupted", file=sys.stderr)
        return 130
    print(render(report))
    out = args.json or RESULTS / ("chat_quick.json" if quick else "chat.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
