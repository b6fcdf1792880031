"""Load over several replicas: many concurrent chat connections, a few messages each.

It starts `--replicas` server processes (`python server.py --port 0`, 2 by default) that
share one PostgreSQL database and one Redis, as replicas behind a load balancer would, opens
`--connections` WebSocket connections (500 by default) spread over them in turn, and once
every connection has said `hello`, all of them chat at the same time: each sends
`--messages` messages (10 by default) one after the other, waiting for each reply.

- **turn latency**: client-side, from sending a `message` frame to receiving its `reply`
  (the durable user turn and its ack, the models in their micro-batches shared by all
  sessions of a replica, the profile update, the streamed reply and its storage).
- **messages/s**: replies received, divided by the time from the start signal to the last
  reply.
- **errors**: error frames, replies that hand the session to an operator (the bot would then
  stop answering), connections that closed or failed to open, turns that timed out. The
  run is a pass only with 0.

The replicas run with their defaults except two settings: `ASSISTANT_MAX_CONNECTIONS_PER_IP`
is the number of connections (every client comes from 127.0.0.1 here) and
`ASSISTANT_DB_POOL_TIMEOUT_S` is `--pool-timeout` (120 s): the run saturates the CPU, and
every turn then queues for a database connection as for everything else.

At the end every replica gets SIGTERM and must drain and exit with status 0. The figures,
the replicas' own counters (from their /metrics) and the machine with its load average go
to `bench/results/load.json` (or `--json`).

    .venv/bin/python bench/load.py                     # 500 connections x 10 messages, 2 replicas
    .venv/bin/python bench/load.py --quick             # 40 x 3, while developing
    .venv/bin/python bench/load.py --db-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

PostgreSQL: `--db-url` or `ASSISTANT_TEST_PG_URL` names a database next to which a
temporary one is created (and dropped afterwards). Redis: `--redis-url` or
`ASSISTANT_TEST_REDIS_URL` (default redis://127.0.0.1:6379/0); keys live under a prefix of
their own, removed afterwards. SQLite cannot be shared well by several processes.

Exit status 0 when the run passed, 1 when something failed, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat_messages import STEADY_MESSAGES as MESSAGES  # noqa: E402
from common import BenchError, cpu_model, percentile, raise_file_limit  # noqa: E402

from profiles import migrate  # noqa: E402
from tests.support.databases import (  # noqa: E402
    temporary_pg_database,
    temporary_redis_prefix,
)
from tests.support.server_process import ServerFailed, server_process  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "load.json"
TURN_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
# Handshakes in flight at once: a burst of hundreds of SYNs would overflow the replicas'
# listen backlog (100) and cost the refused ones a one-second SYN retry.
CONNECT_CONCURRENCY = 50


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    url: str
    log_path: Path

    @property
    def http(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("ws://").rsplit(":", 1)
        return host, int(port)


@dataclass
class ClientResult:
    replica: str
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def temporary_database(admin_url: str) -> AsyncIterator[str]:
    """A new, migrated PostgreSQL database next to `admin_url`'s; dropped afterwards."""
    if make_url(admin_url).get_backend_name() != "postgresql":
        raise BenchError("the replicas share one database: give a PostgreSQL URL")
    async with temporary_pg_database(admin_url, prefix="bench_") as db_url:
        await asyncio.to_thread(migrate, db_url)
        yield db_url


@asynccontextmanager
async def replica(name: str, env: dict[str, str], log_dir: Path) -> AsyncIterator[Replica]:
    """One server process; killed if the run leaves it running (normally it got SIGTERM)."""
    env = {**env, "ASSISTANT_REPLICA_ID": name}
    async with server_process(env, log_dir / f"{name}.log", host=None, cwd=log_dir) as server:
        yield Replica(name, server.process, server.url, server.log)


async def scrape(rep: Replica) -> dict[str, float]:
    """The replica's unlabelled samples and its per-model batch counters, from /metrics."""
    reader, writer = await asyncio.open_connection(*rep.http)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    body = raw.decode().partition("\r\n\r\n")[2]
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def server_figures(samples: dict[str, float]) -> dict[str, float]:
    figures = {
        "turns": samples.get("assistant_turns_total", 0.0),
        "messages": samples.get("assistant_messages_total", 0.0),
        "server_turn_latency_mean_s": samples.get("assistant_turn_latency_seconds_sum", 0.0)
        / max(1.0, samples.get("assistant_turn_latency_seconds_count", 0.0)),
    }
    prefix = "assistant_batch_size_count{model="
    for key, count in samples.items():
        if key.startswith(prefix) and count:
            model = key.removeprefix(prefix).rstrip("}")
            items = samples.get(f"assistant_batch_size_sum{{model={model}}}", 0.0)
            figures[f"{model}_batches"] = count
            figures[f"{model}_mean_batch"] = round(items / count, 2)
    return figures


async def chat(
    rep: Replica,
    index: int,
    messages: int,
    connecting: asyncio.Semaphore,
    ready: asyncio.Queue[int],
    go: asyncio.Event,
) -> ClientResult:
    """One widget: hello, then (after `go`) `messages` turns. It puts its index on `ready`
    once, when it has said hello or has failed before that."""
    result = ClientResult(rep.name)
    announced = False
    try:
        async with connecting:
            ws = await connect(rep.url + "/chat", open_timeout=60, ping_interval=None)
        async with ws:
            hello = {"type": "hello", "user": {"external_id": f"load-{index:05d}"}}
            await ws.send(json.dumps(hello))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), TURN_TIMEOUT_S))
            if welcome["type"] != "welcome":
                result.errors.append(f"hello: {welcome.get('code')}")
                return result
            ready.put_nowait(index)
            announced = True
            await go.wait()
            for n in range(messages):
                text = MESSAGES[(index + n) % len(MESSAGES)]
                sent = time.perf_counter()
                await ws.send(json.dumps({"type": "message", "id": f"m{n}", "text": text}))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), TURN_TIMEOUT_S))
                    if frame["type"] == "error":
                        result.errors.append(frame["code"])
                        break
                    if frame["type"] == "reply":
                        result.latencies_s.append(time.perf_counter() - sent)
                        if frame.get("handoff"):
                            result.errors.append("handoff")
                            return result
                        break
    except TimeoutError:
        result.errors.append("timeout")
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else "none"
        result.errors.append(f"closed {code}")
    except (WebSocketException, OSError) as exc:
        result.errors.append(type(exc).__name__)
    finally:
        if not announced:
            ready.put_nowait(index)
    return result


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": "present" if Path("/dev/nvidia0").exists() else "none",
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_file_limit(args.connections * 2 + 512)
    load_before = os.getloadavg()
    async with AsyncExitStack() as stack:
        db_url = await stack.enter_async_context(temporary_database(args.db_url))
        prefix = await stack.enter_async_context(
            temporary_redis_prefix(args.redis_url, prefix="bench-")
        )
        log_dir = Path(tempfile.mkdtemp(prefix="load-"))
        env = {
            **os.environ,
            "ASSISTANT_HOST": "127.0.0.1",
            "ASSISTANT_DB_URL": db_url,
            "ASSISTANT_REDIS_URL": args.redis_url,
            "ASSISTANT_REDIS_PREFIX": prefix,
            "ASSISTANT_DEVICE": args.device,
            "ASSISTANT_LOG_FORMAT": "json",
            "ASSISTANT_LOG_LEVEL": "WARNING",
            # Every client comes from 127.0.0.1 here, standing for users at their own
            # addresses: the per-address connection limit would refuse most of them.
            "ASSISTANT_MAX_CONNECTIONS_PER_IP": str(args.connections),
            "ASSISTANT_DB_POOL_TIMEOUT_S": str(args.pool_timeout),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        started = time.perf_counter()
        replicas = await asyncio.gather(
            *(
                stack.enter_async_context(replica(f"replica-{n}", env, log_dir))
                for n in range(args.replicas)
            )
        )
        print(f"{len(replicas)} replicas up in {time.perf_counter() - started:.1f}s", flush=True)

        connecting = asyncio.Semaphore(CONNECT_CONCURRENCY)
        ready: asyncio.Queue[int] = asyncio.Queue()
        go = asyncio.Event()
        opened = time.perf_counter()
        clients = [
            asyncio.create_task(
                chat(replicas[i % len(replicas)], i, args.messages, connecting, ready, go)
            )
            for i in range(args.connections)
        ]
        for _ in range(args.connections):
            await ready.get()
        connect_s = time.perf_counter() - opened
        print(f"{args.connections} connections said hello in {connect_s:.1f}s", flush=True)
        start = time.perf_counter()
        go.set()
        results = await asyncio.gather(*clients)
        elapsed = time.perf_counter() - start

        servers = {rep.name: server_figures(await scrape(rep)) for rep in replicas}
        for rep in replicas:
            rep.process.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(
            asyncio.gather(*(rep.process.wait() for rep in replicas)), STOP_TIMEOUT_S
        )

    latencies = [s for r in results for s in r.latencies_s]
    errors = Counter(e for r in results for e in r.errors)
    errors.update(f"exit status {c}" for c in codes if c != 0)
    if errors:
        print(f"replica logs kept in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir)
    if not latencies:
        raise BenchError(f"no turn completed; errors: {dict(errors)}")
    return {
        "config": {
            "replicas": args.replicas,
            "connections": args.connections,
            "messages_per_connection": args.messages,
            "device": args.device,
            "db": "postgresql",
            "db_pool_timeout_s": args.pool_timeout,
            "redis": True,
        },
        "figures": {
            "errors": sum(errors.values()),
            "errors_by_kind": dict(errors),
            "turns": len(latencies),
            "turn_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "turn_p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "turn_max_ms": round(max(latencies) * 1000, 1),
            "messages_per_s": round(len(latencies) / elapsed, 1),
            "chat_s": round(elapsed, 1),
            "connect_s": round(connect_s, 1),
        },
        "replicas": servers,
        "machine": machine(load_before),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--messages", type=int, default=10, help="per connection")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 connections x 3 messages")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--db-url", default=os.environ.get("ASSISTANT_TEST_PG_URL"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ASSISTANT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument(
        "--pool-timeout", type=float, default=120.0, help="replicas' ASSISTANT_DB_POOL_TIMEOUT_S"
    )
    parser.add_argument("--json", type=Path, default=None, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.messages = 40, 3
    if not args.db_url:
        parser.error("give --db-url or set ASSISTANT_TEST_PG_URL (a PostgreSQL URL)")
    if args.connections < 1 or args.messages < 1 or args.replicas < 1:
        parser.error("--connections, --messages and --replicas must be at least 1")
    try:
        report = asyncio.run(run(args))
    except (BenchError, ServerFailed) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    figures = report["figures"]
    print(json.dumps(report, indent=2))
    print(
        f"errors {figures['errors']}  p50 {figures['turn_p50_ms']} ms  "
        f"p99 {figures['turn_p99_ms']} ms  {figures['messages_per_s']} messages/s"
    )
    out = args.json or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
