"""Soak: many customers talking to one server for a long time; turns, errors and memory.

The server runs as its own process (`python server.py`, as in production) on a fresh SQLite
database (or `--db-url`), so that its resident memory can be read from outside (psutil).
`--sessions` customers (200) connect at staggered times; each, in a loop until the end:
waits a think time, sometimes sends a behaviour event, sends a message and waits for its
reply; every 10 to 30 turns it drops its connection and resumes its session with `last_seq`
(as a phone changing networks does). Every 10 s a line shows the turns and errors so far,
the reply latency and the server's resident memory.

Memory growth is measured after a warm-up (the first fifth of the run, at least 30 s): the
mean of the last three samples against the mean of the three samples that end the warm-up.
The target is under 10 %. Exit status 0 when the run completed within target, 1 otherwise
(or when a customer's connection failed), 2 on bad flags.

    .venv/bin/python bench/soak.py                   # 200 sessions, 30 minutes
    .venv/bin/python bench/soak.py --minutes 2       # a short run while developing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import cpu_model  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from assistant import migrate_database  # noqa: E402
from tests.support.server_process import ServerProcess  # noqa: E402

TARGET_GROWTH = 0.10
SAMPLE_S = 10.0
RECV_TIMEOUT_S = 120.0
# Questions the assistant answers itself, so that no session is handed to an operator.
QUESTIONS = (
    "How do I activate my new card?",
    "Why was my transfer declined?",
    "Can I top up my account by bank transfer?",
    "My card payment was declined at the shop, why?",
    "How long does a transfer to another bank take?",
    "Where can I see my card's PIN?",
)
EVENTS = ("page_view", "search", "cart_add", "payment_failed")


@dataclass
class Totals:
    turns: int = 0
    events: int = 0
    resumes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    rss_mib: float
    turns: int
    errors: int
    p50_ms: float


class Customer:
    """One session, kept across connections with session_id and last_seq."""

    def __init__(self, index: int, url: str, think_s: float, totals: Totals) -> None:
        self.index = index
        self.url = url
        self.think_s = think_s
        self.totals = totals
        self.rng = random.Random(index)
        self.session_id: str | None = None
        self.last_seq = 0
        self.sent = 0

    async def run(self, stop_at: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, min(20.0, self.think_s * 2)))
        try:
            while time.monotonic() < stop_at:
                async with connect(self.url + "/chat", max_size=None) as ws:
                    await self._hello(ws)
                    for _ in range(self.rng.randint(10, 30)):
                        if time.monotonic() >= stop_at:
                            break
                        await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.think_s)
                        await self._turn(ws)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self.totals.failures.append(f"customer {self.index}: {exc!r}")

    async def _recv(self, ws: ClientConnection) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
        seq = int(frame.get("seq", 0))
        if seq:
            if seq != self.last_seq + 1:
                self.totals.failures.append(
                    f"customer {self.index}: seq {seq} after {self.last_seq}"
                )
            self.last_seq = seq
        if frame["type"] == "error":
            self.totals.errors[str(frame["code"])] += 1
        return frame

    async def _hello(self, ws: ClientConnection) -> None:
        hello: dict[str, Any] = {"type": "hello", "user": {"external_id": f"soak-{self.index}"}}
        if self.session_id is not None:
            hello.update(session_id=self.session_id, last_seq=self.last_seq)
        await ws.send(json.dumps(hello))
        welcome = await self._recv(ws)
        if welcome["type"] != "welcome":
            raise TimeoutError(f"hello refused: {welcome}")
        if welcome["resumed"]:
            self.totals.resumes += 1
        elif self.session_id is not None:
            self.totals.failures.append(f"customer {self.index}: session not resumed")
            self.last_seq = 0
        self.session_id = welcome["session_id"]
        while self.last_seq < int(welcome["last_seq"]):
            await self._recv(ws)

    async def _turn(self, ws: ClientConnection) -> None:
        self.sent += 1
        if self.rng.random() < 0.3:
            name = self.rng.choice(EVENTS)
            event = {
                "type": "event",
                "id": f"e{self.index}-{self.sent}",
                "name": name,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "props": {"path": f"/help/{name}"},
            }
            await ws.send(json.dumps(event))
            while (await self._recv(ws))["type"] not in ("ack", "error"):
                pass
            self.totals.events += 1
        started = time.perf_counter()
        text = self.rng.choice(QUESTIONS)
        await ws.send(json.dumps({"type": "message", "id": f"m{self.sent}", "text": text}))
        while (frame := await self._recv(ws))["type"] not in ("reply", "error"):
            pass
        if frame["type"] == "reply":
            self.totals.turns += 1
            self.totals.latencies_ms.append((time.perf_counter() - started) * 1000.0)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


async def _sample(
    server: psutil.Process, totals: Totals, started: float, stop_at: float, out: list[Sample]
) -> None:
    while True:
        await asyncio.sleep(SAMPLE_S)
        recent = totals.latencies_ms[-500:]
        sample = Sample(
            at_s=round(time.monotonic() - started, 1),
            rss_mib=server.memory_info().rss / 2**20,
            turns=totals.turns,
            errors=sum(totals.errors.values()),
            p50_ms=statistics.median(recent) if recent else float("nan"),
        )
        out.append(sample)
        print(
            f"{sample.at_s:7.0f} s  rss {sample.rss_mib:7.1f} MiB  turns {sample.turns:6d}  "
            f"errors {sample.errors:4d}  reply p50 {sample.p50_ms:6.1f} ms  "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        if time.monotonic() >= stop_at:
            return


async def _run(args: argparse.Namespace) -> int:
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}"
    print(f"machine: {machine}", flush=True)
    print(f"{args.sessions} sessions for {args.minutes} min, think time {args.think_s} s")
    with tempfile.TemporaryDirectory() as tmp:
        db_url = args.db_url or f"sqlite+aiosqlite:///{tmp}/soak.db"
        await asyncio.to_thread(migrate_database, db_url)
        env = {
            "ASSISTANT_MAX_CONNECTIONS_PER_IP": str(args.sessions * 2),
            "ASSISTANT_LOG_LEVEL": "WARNING",
        }
        server = await ServerProcess.start(db_url, Path(tmp) / "server.log", env)
        try:
            process = psutil.Process(server.pid)
            totals = Totals()
            samples: list[Sample] = []
            started = time.monotonic()
            stop_at = started + args.minutes * 60.0
            customers = [
                Customer(i, server.url, args.think_s, totals) for i in range(args.sessions)
            ]
            sampler = asyncio.create_task(_sample(process, totals, started, stop_at, samples))
            await asyncio.gather(*(c.run(stop_at) for c in customers))
            await sampler
            log = await asyncio.to_thread((Path(tmp) / "server.log").read_text, errors="replace")
            log_tail = log[-2000:]
        finally:
            await server.stop()
    warmup_s = max(30.0, args.minutes * 60.0 / 5)
    after = [s for s in samples if s.at_s >= warmup_s]
    baseline = _mean([s.rss_mib for s in after[:3]])
    final = _mean([s.rss_mib for s in samples[-3:]])
    growth = (final - baseline) / baseline
    elapsed = samples[-1].at_s if samples else 0.0
    latencies = sorted(totals.latencies_ms)
    summary = {
        "machine": machine,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "sessions": args.sessions,
        "minutes": args.minutes,
        "turns": totals.turns,
        "turns_per_s": round(totals.turns / elapsed, 2) if elapsed else 0.0,
        "events": totals.events,
        "resumes": totals.resumes,
        "errors": dict(totals.errors),
        "failures": totals.failures[:20],
        "reply_p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "reply_p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "rss_mib_after_warmup": round(baseline, 1),
        "rss_mib_final": round(final, 1),
        "rss_growth": round(growth, 4),
        "samples": [asdict(s) for s in samples],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    if args.json:
        text = json.dumps(summary, indent=2) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text)
    ok = growth < TARGET_GROWTH and not totals.failures
    if not ok:
        print(f"FAILED (growth {growth:.1%}, {len(totals.failures)} failures)\n{log_tail}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--think-s", type=float, default=10.0, help="mean pause between a customer's turns"
    )
    parser.add_argument("--db-url", help="a migrated database for the server (default: SQLite)")
    parser.add_argument("--json", help="also write the summary and samples to this file")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.minutes <= 0:
        parser.error("--sessions and --minutes must be positive")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
