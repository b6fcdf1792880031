"""Banking77 test messages sent second in a conversation, next to the same messages sent first.

    .venv/bin/python bench/second_message.py [--data DIR] [--limit N] [--seed S] [--workers W]

One real server (tests/support/server_process.py, SQLite in a temporary folder); every
conversation is a new user on its own WebSocket. Conditions: the message first; after each
of several greetings; after a thanks; after an unrelated behaviour event (a home page view).
Prints per condition the accuracy on the gold Banking77 intent, its difference to the
first-message accuracy in points (target: within 0.5 in every condition), and the handoffs:
those raised on the greeting or thanks turn itself and on the message after it (target: no
handoff caused by a greeting). `--limit` takes a seeded random subset of the test set.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    bench_server_env,
    describe_machine,
    load_average,
    migrate_server_db,
)
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from tests.support.server_process import server_process  # noqa: E402

FIRST = "first"
GREETINGS = ("Hello", "Hi there", "Good morning", "Hey!")
THANKS = "Thank you so much!"
EVENT = "after page_view(home)"


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    opener: str | None = None  # a message sent before
    event: bool = False  # an unrelated behaviour event sent before


CONDITIONS = (
    Condition(FIRST),
    *(Condition(f"after {g!r}", opener=g) for g in GREETINGS),
    Condition(f"after {THANKS!r}", opener=THANKS),
    Condition(EVENT, event=True),
)


@dataclass(slots=True)
class Tally:
    right: int = 0
    total: int = 0
    opener_handoffs: int = 0
    message_handoffs: int = 0


def test_set(data: Path) -> list[tuple[str, str]]:
    path = data / "banking77" / "banking_data" / "test.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


async def _reply(ws: ClientConnection) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60.0))
        if frame["type"] == "reply":
            return dict(frame)


async def _ack(ws: ClientConnection) -> None:
    while json.loads(await asyncio.wait_for(ws.recv(), 60.0))["type"] != "ack":
        pass


async def conversation(
    url: str, user: str, condition: Condition, text: str
) -> tuple[str, bool, bool]:
    """The message's intent label and handoff, and whether the opener was handed off."""
    async with connect(url + "/chat", max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "user": {"external_id": user}}))
        await asyncio.wait_for(ws.recv(), 60.0)
        opener_handoff = False
        if condition.opener is not None:
            await ws.send(json.dumps({"type": "message", "id": "o", "text": condition.opener}))
            opener_handoff = bool((await _reply(ws))["handoff"])
        if condition.event:
            at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            event = {"type": "event", "id": "e", "name": "page_view", "at": at}
            await ws.send(json.dumps({**event, "props": {"page": "home"}}))
            await _ack(ws)
        await ws.send(json.dumps({"type": "message", "id": "m", "text": text}))
        reply = await _reply(ws)
        intent = reply.get("intent") or {}
        return str(intent.get("label")), bool(reply["handoff"]), opener_handoff


async def run(args: argparse.Namespace) -> None:
    rows = test_set(args.data)
    if args.limit:
        rows = random.Random(args.seed).sample(rows, min(args.limit, len(rows)))
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_server_env(f"sqlite+aiosqlite:///{tmp}/bench.db")
        env.setdefault("ASSISTANT_DEVICE", "cpu")
        await asyncio.to_thread(migrate_server_db, env)
        async with server_process(env, Path(tmp) / "server.log") as server:
            tallies = {c.name: Tally() for c in CONDITIONS}
            jobs = [(c, i, t, g) for i, (t, g) in enumerate(rows) for c in CONDITIONS]
            queue: asyncio.Queue[tuple[Condition, int, str, str]] = asyncio.Queue()
            for job in jobs:
                queue.put_nowait(job)
            started = time.perf_counter()

            async def worker() -> None:
                while not queue.empty():
                    c, i, text, gold = queue.get_nowait()
                    label, handoff, opener = await conversation(
                        server.url, f"bench-{c.name}-{i}", c, text
                    )
                    tally = tallies[c.name]
                    tally.total += 1
                    tally.right += label == gold
                    tally.message_handoffs += handoff
                    tally.opener_handoffs += opener

            await asyncio.gather(*(worker() for _ in range(args.workers)))
            elapsed = time.perf_counter() - started
    machine = describe_machine(env.get("ASSISTANT_DEVICE", "cpu"))
    print(f"machine: {machine}; load {load_average():.2f}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    subset = f"seeded subset of {len(rows)} (seed {args.seed})" if args.limit else "all"
    print(
        f"Banking77 test messages: {len(rows)} ({subset}); {len(jobs)} conversations "
        f"in {elapsed:.0f} s"
    )
    base = tallies[FIRST]
    base_acc = 100.0 * base.right / base.total
    print(f"{'condition':32s} {'accuracy':>9s} {'vs first':>9s} {'handoffs (opener/message)':>26s}")
    for c in CONDITIONS:
        t = tallies[c.name]
        acc = 100.0 * t.right / t.total
        print(
            f"{c.name:32s} {acc:8.2f}% {acc - base_acc:+8.2f} "
            f"{t.opener_handoffs:>12d} / {t.message_handoffs}"
        )
    caused = sum(tallies[f"after {g!r}"].opener_handoffs for g in GREETINGS)
    after = (
        sum(tallies[f"after {g!r}"].message_handoffs - 0 for g in GREETINGS)
        - len(GREETINGS) * base.message_handoffs
    )
    print(
        f"handoffs on a greeting: {caused}; extra handoffs on the message after a greeting "
        f"(vs first): {after}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("ASSISTANT_DATA_DIR", "/work/shared/data"))
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--limit", type=int, default=0, help="a seeded subset of N messages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16, help="conversations at once")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
