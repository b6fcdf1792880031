"""Helpers for /operator tests: operators with keys in a server's database, a real client."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from profiles import OperatorRole
from server import RunningServer

RECV_TIMEOUT_S = 30.0


async def make_operator(srv: RunningServer, name: str, role: OperatorRole) -> str:
    """Create an operator in `srv`'s database; returns its key."""
    _, key = await srv.runtime.operators.create_operator(name, role)
    return key


class OperatorClient:
    """A real websockets client on /operator: `call` sends a command and waits for its answer.

    Frames that are not the answer (session.turn, session.state) are kept in `pushed`.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pushed: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), within))
        assert isinstance(frame, dict)
        return frame

    async def call(self, frame_type: str, **fields: Any) -> dict[str, Any]:
        """The `result` or `error` answering this command."""
        ref = f"c{next(self._ids)}"
        await self.send({"type": frame_type, "id": ref, **fields})
        while True:
            frame = await self.recv()
            if frame.get("ref") == ref and frame["type"] in ("result", "error"):
                return frame
            self.pushed.append(frame)

    async def ok(self, frame_type: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call(frame_type, **fields)
        assert answer["type"] == "result", answer
        return answer

    async def next_pushed(
        self, frame_type: str, within: float = RECV_TIMEOUT_S, **match: Any
    ) -> dict[str, Any]:
        """The first pushed frame of `frame_type` whose fields include `match`."""

        def fits(frame: dict[str, Any]) -> bool:
            if frame["type"] != frame_type:
                return False
            return all(frame.get(k) == v for k, v in match.items())

        for index, frame in enumerate(self.pushed):
            if fits(frame):
                return self.pushed.pop(index)
        while True:
            frame = await self.recv(within)
            if fits(frame):
                return frame
            self.pushed.append(frame)


@asynccontextmanager
async def operator_client(srv: RunningServer, key: str | None) -> AsyncIterator[OperatorClient]:
    """A client on `srv`'s /operator, signed in with `key` when one is given."""
    async with connect(srv.url + "/operator", max_size=None) as ws:
        client = OperatorClient(ws)
        if key is not None:
            answer = await client.call("auth", token=key)
            assert answer["type"] == "result", answer
        yield client
