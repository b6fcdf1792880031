"""The client side: widget connections that say hello, report events and send messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from chat_messages import MESSAGES
from common import BenchError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

RECV_TIMEOUT_S = 60.0

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


async def open_clients(
    url: str, names: Sequence[str], at_once: int, *, events: bool = True
) -> list[Client]:
    """Open a client per name, `at_once` handshakes at a time."""
    gate = asyncio.Semaphore(at_once)

    async def one(name: str) -> Client:
        async with gate:
            return await Client.open(url, name, events=events)

    return list(await asyncio.gather(*(one(n) for n in names)))
