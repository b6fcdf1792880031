"""Chat turn latency against a real server, next to the bare text-encoder forward it contains.

What it measures, in one process and with the models loaded once:

- **turn latency**: a real server on port 0 (a fresh, migrated SQLite database in a temporary
  directory unless `--db-url` names another one) and one real websockets client on `/chat`.
  After `hello` and a few warm-up turns that are not counted, the client sends `--turns`
  messages one at a time, cycling a fixed list of varied customer-service sentences. A turn's
  latency is the client-side time (`time.perf_counter`) from sending the `message` frame to
  receiving its `reply` frame: everything the server does for a turn (parsing, redaction, the
  durable user turn and its ack, the user's recent events, the text encoder and the fusion
  model in their micro-batchers, the profile read-modify-write, the reply deltas and the
  transaction that stores them) plus the WebSocket hops on localhost.
- **bare encoder**: `text_encoder.encode([text])` on the same loaded model for the same
  messages, one sentence per call, timed around the call alone in one worker thread (as the
  micro-batcher runs it) with torch's default thread count (the server runs a lone message on
  half the cores, see `ASSISTANT_LONE_THREADS`; the ratio carries that choice). It runs
  after every block of ten turns, while the server is idle, on that block's messages: the
  machine's speed drifts, and both figures then sample the same moments.

It prints p50 and p99 turn latency, the encoder's p50 and `ratio = turn p50 / encoder p50`
(the cost of everything around the model; the target is 2.0 or less), with the machine and
its load average: on a small shared machine other processes move both figures, so compare
runs made at a similar load.

    .venv/bin/python bench/chat_latency.py                       # 200 turns, device auto
    .venv/bin/python bench/chat_latency.py --turns 500 --device cpu --json var/latency.json
    .venv/bin/python bench/chat_latency.py --db-url postgresql+asyncpg://postgres@127.0.0.1/bench

`--db-url` is migrated to the latest schema and gets a new user and conversation per run:
point it at a database made for the bench.

Exit status 0 when the run completed (whatever the ratio), 1 when something failed (an
error frame, a timeout, a closed connection, a server that did not start), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Before anything imports transformers: an accidental model-hub call must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from chat_messages import MESSAGES  # noqa: E402
from common import BenchError, Machine, describe_machine, load_average, percentile  # noqa: E402
from tqdm import tqdm  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, WebSocketException  # noqa: E402

from assistant import Models, Settings, load_models  # noqa: E402
from assistant.chat.rate_limits import RateLimits  # noqa: E402
from server import running  # noqa: E402

# Taken before any model worker changes it.
DEFAULT_TORCH_THREADS = torch.get_num_threads()

DeviceChoice = Literal["auto", "cpu", "cuda"]

DEFAULT_TURNS = 200
WARMUP_TURNS = 10
RECV_TIMEOUT_S = 30.0
TARGET_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Figures:
    turns: int
    warmup_turns: int
    db_backend: str
    turn_p50_ms: float
    turn_p99_ms: float
    turn_mean_ms: float
    turn_max_ms: float
    encoder_p50_ms: float
    encoder_p99_ms: float
    ratio: float
    target_ratio: float
    # 1-minute load average when the run started and ended: other processes on the machine
    # (a test suite, a training run) inflate both figures, the turn's more than the model's.
    load_start: float
    load_end: float
    machine: Machine


def messages(count: int, offset: int = 0) -> list[str]:
    """`count` messages cycling MESSAGES, starting `offset` into the cycle."""
    return [MESSAGES[(offset + i) % len(MESSAGES)] for i in range(count)]


# the client side of a turn


async def recv_frame(ws: ClientConnection) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)
    except TimeoutError:
        raise BenchError(f"no frame from the server within {RECV_TIMEOUT_S:.0f} s") from None
    except ConnectionClosed as exc:
        raise BenchError(f"the server closed the connection: {exc}") from None
    frame = json.loads(raw)
    if not isinstance(frame, dict) or "type" not in frame:
        raise BenchError(f"not a server frame: {raw!r}")
    if frame["type"] == "error":
        raise BenchError(
            f"error frame: {frame.get('code')}: {frame.get('message')} (ref {frame.get('ref')})"
        )
    return frame


async def hello(ws: ClientConnection) -> None:
    external_id = f"bench-{uuid.uuid4().hex[:12]}"
    await ws.send(json.dumps({"type": "hello", "user": {"external_id": external_id}}))
    frame = await recv_frame(ws)
    if frame["type"] != "welcome":
        raise BenchError(f"expected 'welcome' after hello, got {frame!r}")


async def turn(ws: ClientConnection, client_id: str, text: str) -> float:
    """Send one message and wait for its reply; the seconds in between (client side)."""
    payload = json.dumps({"type": "message", "id": client_id, "text": text})
    acked = False
    started = time.perf_counter()
    await ws.send(payload)
    while True:
        frame = await recv_frame(ws)
        if frame["type"] == "reply":
            elapsed = time.perf_counter() - started
            if not acked:
                raise BenchError(f"reply to {client_id!r} arrived before its ack")
            return elapsed
        if frame["type"] == "ack" and frame.get("id") == client_id:
            acked = True


BLOCK = 10


async def run_turns(
    url: str, texts: Sequence[str], warmup: Sequence[str], models: Models
) -> tuple[list[float], list[float]]:
    """The turns, in blocks of BLOCK; after each block, with the server idle, the bare
    encoder on the same messages: both sample the machine at the same moments, so a drift in
    its speed moves them alike."""
    latencies: list[float] = []
    encoder: list[float] = []
    try:
        async with connect(f"{url}/chat") as ws:
            await hello(ws)
            for i, text in enumerate(warmup):
                await turn(ws, f"warmup-{i}", text)
            await asyncio.to_thread(time_encoder, models, warmup)
            with tqdm(total=len(texts), desc="turns", unit="turn", leave=False) as bar:
                for first in range(0, len(texts), BLOCK):
                    block = texts[first : first + BLOCK]
                    for i, text in enumerate(block, start=first):
                        latencies.append(await turn(ws, f"m-{i}", text))
                        bar.update(1)
                    encoder.extend(await asyncio.to_thread(time_encoder, models, block))
    except (OSError, WebSocketException) as exc:
        raise BenchError(f"could not talk to {url}/chat: {exc}") from exc
    return latencies, encoder


# the bare model


def time_encoder(models: Models, texts: Sequence[str]) -> list[float]:
    """Seconds of each encode([text]), one sentence per call, in a worker thread."""
    # The server's model workers set their own thread counts (fusion.serving); a new thread
    # could inherit the last of them. The bare forward gets torch's default.
    torch.set_num_threads(DEFAULT_TORCH_THREADS)
    encoder = models.text_encoder
    samples: list[float] = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode([text])
        samples.append(time.perf_counter() - started)
    return samples


# the run


async def serve_and_chat(
    settings: Settings, models: Models, texts: Sequence[str], warmup: Sequence[str]
) -> tuple[list[float], list[float]]:
    """Start the server (migrating its database), run the turns, stop the server."""
    try:
        async with running(settings, models=models, migrate_db=True) as srv:
            return await run_turns(srv.url, texts, warmup, models)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"the server failed ({settings.db_url}): {exc!r}") from exc


async def bench(turns: int, device: DeviceChoice, db_url: str | None) -> Figures:
    texts = messages(turns, offset=WARMUP_TURNS)
    warmup = messages(WARMUP_TURNS)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="chat-latency-") as tmp:
        url = db_url or f"sqlite+aiosqlite:///{Path(tmp) / 'assistant.db'}"
        # One client sending as fast as replies come is what the rate limits exist to stop.
        settings = Settings(
            host="127.0.0.1",
            port=0,
            db_url=url,
            device=device,
            rate=RateLimits(per_connection=0, per_user=0),
        )
        try:
            models = load_models(settings)
        except Exception as exc:
            raise BenchError(f"could not load the models on {device!r}: {exc}") from exc
        models.start()
        try:
            latencies, encoder = await serve_and_chat(settings, models, texts, warmup)
        finally:
            await models.stop()
    turn_p50 = percentile(latencies, 50) * 1000.0
    encoder_p50 = percentile(encoder, 50) * 1000.0
    return Figures(
        turns=len(latencies),
        warmup_turns=WARMUP_TURNS,
        db_backend=url.partition(":")[0].partition("+")[0],
        turn_p50_ms=turn_p50,
        turn_p99_ms=percentile(latencies, 99) * 1000.0,
        turn_mean_ms=float(np.mean(latencies) * 1000.0),
        turn_max_ms=float(np.max(latencies) * 1000.0),
        encoder_p50_ms=encoder_p50,
        encoder_p99_ms=percentile(encoder, 99) * 1000.0,
        ratio=turn_p50 / encoder_p50,
        target_ratio=TARGET_RATIO,
        load_start=load_start,
        load_end=load_average(),
        machine=describe_machine(str(models.device), DEFAULT_TORCH_THREADS),
    )


def table(figures: Figures) -> str:
    m = figures.machine
    verdict = "ok" if figures.ratio <= figures.target_ratio else "ABOVE TARGET"
    rows = [
        ("machine", f"{m.cpu}, {m.cores} cores ({m.usable_cores} usable)"),
        ("device", f"{m.device}, torch {m.torch}, {m.torch_threads} threads"),
        ("load (1 min)", f"{figures.load_start:.2f} at start, {figures.load_end:.2f} at end"),
        ("database", figures.db_backend),
        ("turns", f"{figures.turns} (+{figures.warmup_turns} warm-up, not counted)"),
        ("turn p50", f"{figures.turn_p50_ms:8.2f} ms"),
        ("turn p99", f"{figures.turn_p99_ms:8.2f} ms"),
        ("encoder p50", f"{figures.encoder_p50_ms:8.2f} ms   (bare encode([text]))"),
        (
            "ratio",
            f"{figures.ratio:8.2f}      turn p50 / encoder p50, target <= "
            f"{figures.target_ratio:.1f}: {verdict}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat_latency",
        description="Chat turn latency (p50, p99) over a real server vs the bare text encoder.",
    )
    parser.add_argument(
        "--turns", type=int, default=DEFAULT_TURNS, help=f"measured turns ({DEFAULT_TURNS})"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="model device (auto)"
    )
    parser.add_argument(
        "--db-url",
        help="bench against this database (migrated first), e.g. a PostgreSQL asyncpg URL; "
        "default: a fresh SQLite file in a temporary directory",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.turns < 1:
        _parser().error("--turns must be at least 1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        figures = asyncio.run(bench(args.turns, args.device, args.db_url))
    except BenchError as exc:
        print(f"chat_latency: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chat_latency: interrupted", file=sys.stderr)
        return 130
    print(table(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(figures), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
