"""Limits that keep one client from taking the server: connections per address, the time to
say hello, pings for vanished peers, bounded send queues for clients that do not read, frame
size. Message rate limits are tested in tests/test_rate_limits.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant import RateLimits
from server import RunningServer
from tests.conftest import Client, ServerFactory

WAIT_S = 30.0


async def eventually(check: Callable[[], bool], within: float = WAIT_S) -> float:
    """Seconds until `check()` held; fails after `within`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "did not happen in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def close_code(client: Client, within: float = WAIT_S) -> int:
    """Read until the server closes the connection; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv(within)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    return closed.value.rcvd.code


class RawWebSocket:
    """A client that opens a WebSocket by hand and then does only what the test says.

    Its receive buffer is made small so that a server writing to it fills it quickly. It
    never answers pings unless told to read.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, srv: RunningServer, path: str = "/chat") -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        """One masked text frame (client frames must be masked)."""
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x81, 0x80 | size])
        elif size < 65536:
            header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    async def drain(self, within: float) -> bool:
        """Flush what was written; False when the peer stopped taking it in time or hung up."""
        try:
            await asyncio.wait_for(self.writer.drain(), within)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def abort(self) -> None:
        self.writer.transport.abort()


async def test_connections_per_address_are_limited(start_server: ServerFactory) -> None:
    async with start_server(max_connections_per_ip=3) as srv:
        url = srv.url + "/chat"
        first = [await connect(url) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 429
        with pytest.raises(InvalidStatus):
            await connect(srv.url + "/operator")
        # Probes are plain HTTP and not counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        # A slot frees when a connection closes.
        await first[0].close()
        await eventually(lambda: srv.app.per_address["127.0.0.1"] == 2)
        again = await connect(url)
        client = Client(again)
        await client.hello()
        for ws in [*first[1:], again]:
            await ws.close()
        await eventually(lambda: not srv.app.per_address)


async def test_a_connection_must_say_hello_in_time(start_server: ServerFactory) -> None:
    async with start_server(hello_timeout_s=0.5) as srv:
        async with connect(srv.url + "/chat") as silent, connect(srv.url + "/chat") as talker:
            chatty = Client(talker)
            await chatty.hello()
            # Frames that do not open the session do not count.
            await Client(silent).send({"type": "ping"})
            assert (await Client(silent).recv())["type"] == "pong"
            assert await close_code(Client(silent), within=5) == 1008
            await asyncio.sleep(0.6)
            await chatty.send({"type": "ping", "id": "still-here"})
            assert (await chatty.recv())["id"] == "still-here"
        async with connect(srv.url + "/operator") as unsigned:
            assert await close_code(Client(unsigned), within=5) == 1008


async def test_half_open_peers_are_dropped_by_pings(start_server: ServerFactory) -> None:
    settings = {"ping_interval_s": 0.3, "ping_timeout_s": 0.3, "close_timeout_s": 0.5}
    async with start_server(**settings) as srv, connect(srv.url + "/chat") as ws:
        # A live client answers the server's pings (its library does) and stays.
        live = Client(ws)
        await live.hello()
        vanished = await RawWebSocket.open(srv)
        vanished.send_text(json.dumps({"type": "hello"}))
        await eventually(lambda: len(srv.app.open) == 2)
        # The other never answers a ping, like a peer whose network went away.
        took = await eventually(lambda: len(srv.app.open) == 1, within=10)
        assert took < 5
        await asyncio.sleep(1.0)
        await live.send({"type": "ping", "id": "alive"})
        assert (await live.recv())["id"] == "alive"
        vanished.abort()


async def test_a_client_that_never_reads_is_disconnected_with_memory_bounded(
    start_server: ServerFactory,
) -> None:
    # No pings, so that only the send queue can end it.
    settings = {"ping_interval_s": 0, "send_queue": 100, "close_timeout_s": 0.5}
    async with start_server(**settings) as srv, connect(srv.url + "/chat") as ws:
        bystander = Client(ws)
        await bystander.hello()
        process = psutil.Process()
        before = process.memory_info().rss
        slow = await RawWebSocket.open(srv)
        slow.send_text(json.dumps({"type": "hello"}))
        # Every frame asks for an answer of about 100 bytes that it never reads: 20 MB
        # of answers if the server kept them.
        frame = json.dumps({"type": "ping", "id": "x" * 64})
        sent = 0
        while sent < 200_000 and len(srv.app.open) == 2:
            for _ in range(500):
                slow.send_text(frame)
            sent += 500
            if not await slow.drain(within=2.0):
                break
        await eventually(lambda: len(srv.app.open) == 1)
        grown = process.memory_info().rss - before
        assert grown < 15 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"
        # Everyone else is still served.
        await bystander.send({"type": "ping", "id": "fine"})
        assert (await bystander.recv())["id"] == "fine"
        slow.abort()


async def test_oversized_operator_frame_closes_1009(start_server: ServerFactory) -> None:
    async with start_server() as srv, connect(srv.url + "/operator") as ws:
        client = Client(ws)
        await client.send({"type": "auth", "token": "x" * (65 * 1024)})
        assert await close_code(client) == 1009


async def test_a_users_message_rate_is_shared_by_all_its_connections(
    start_server: ServerFactory,
) -> None:
    window_s = 4.0
    limits = RateLimits(window_s=window_s, per_connection=100, per_user=3)
    async with (
        start_server(rate=limits) as srv,
        connect(srv.url + "/chat") as first,
        connect(srv.url + "/chat") as second,
    ):
        tabs = [Client(first), Client(second)]
        for tab in tabs:
            await tab.hello(user={"external_id": "two-tabs"})
        # A burst inside one fixed window: start just after a window boundary.
        await asyncio.sleep(window_s - time.time() % window_s + 0.05)
        answers: list[dict[str, Any]] = []
        for index in range(4):
            tab = tabs[index % 2]
            await tab.send({"type": "message", "id": f"t{index}", "text": "Where is my card?"})
            # The answer to this message (replies to earlier ones may come first).
            while (answer := await tab.recv())["type"] not in ("ack", "error"):
                pass
            answers.append(answer)
        assert [a["type"] for a in answers] == ["ack", "ack", "ack", "error"], answers
        assert (answers[3]["code"], answers[3]["ref"]) == ("rate_limited", "t3")


async def test_messages_waiting_for_replies_are_bounded_per_session(
    start_server: ServerFactory,
) -> None:
    async with start_server() as srv, connect(srv.url + "/chat") as ws:
        client = Client(ws)
        welcome = await client.hello(user={"external_id": "impatient"})
        burst = 30
        for index in range(burst):
            await client.send({"type": "message", "id": f"b{index}", "text": "Where is my card?"})
        acked: set[str] = set()
        refused: set[str] = set()
        replies = 0
        while len(acked) + len(refused) < burst or replies < len(acked):
            frame = await client.recv()
            if frame["type"] == "ack":
                acked.add(frame["id"])
            elif frame["type"] == "error":
                assert frame["code"] == "overloaded", frame
                refused.add(frame["ref"])
            elif frame["type"] == "reply":
                replies += 1
        assert refused, "more than 16 waiting messages are refused"
        stored = await srv.runtime.store.list_turns(welcome["session_id"])
        assert {t.client_id for t in stored if t.role == "user"} == acked


@pytest.mark.parametrize("setting", ["off", "deflate"])
async def test_websocket_compression_follows_the_setting(
    start_server: ServerFactory, setting: str
) -> None:
    """Off by default: a browser offers per-message deflate, and the server declines it."""
    overrides = {} if setting == "off" else {"ws_compression": setting}
    async with start_server(**overrides) as srv, connect(srv.url + "/chat") as ws:
        assert ws.request is not None and ws.response is not None
        # websockets' client offers permessage-deflate, as browsers do.
        assert "permessage-deflate" in (ws.request.headers.get("Sec-WebSocket-Extensions") or "")
        accepted = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert ("permessage-deflate" in accepted) == (setting == "deflate")
        client = Client(ws)
        welcome = await client.hello()
        assert welcome["type"] == "welcome"
