"""Outages of the services behind the server, taken away through a TCP proxy.

The real PostgreSQL and Redis keep running for everyone else: the server under test talks
to them through tests/support/tcp_proxy.py, which a test cuts (open connections reset, new ones
refused, as when the service stops) and restores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect

from assistant import migrate_database
from server import RunningServer
from tests.conftest import Client, ServerFactory, pg_admin_url
from tests.support.databases import temporary_pg_database
from tests.support.operator_helpers import make_operator, operator_client
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio

RECOVERY_S = 30.0


async def http_status(srv: RunningServer, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return int(raw.split(b" ", 2)[1])


async def turn(client: Client, message_id: str, text: str) -> list[dict[str, Any]]:
    await client.send({"type": "message", "id": message_id, "text": text})
    return await client.recv_until("reply")


@pytest.fixture
async def pg_behind_proxy() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A migrated PostgreSQL database, and its URL through a proxy the test can cut."""
    admin = pg_admin_url()
    async with temporary_pg_database(admin) as direct:
        await asyncio.to_thread(migrate_database, direct)
        target = make_url(direct)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        try:
            url = target.set(host="127.0.0.1", port=proxy.port)
            yield url.render_as_string(hide_password=False), proxy
        finally:
            await proxy.close()


async def test_postgres_outage_mid_conversation(
    start_server: ServerFactory, pg_behind_proxy: tuple[str, TcpProxy]
) -> None:
    url, proxy = pg_behind_proxy
    async with start_server(db_url=url) as srv:
        key = await make_operator(srv, "outage-admin", "admin")
        async with connect(srv.url + "/chat") as ws, operator_client(srv, key) as operator:
            client = Client(ws)
            welcome = await client.hello(user={"external_id": "outage-user"})
            assert (await turn(client, "before", "How do I activate my new card?"))[0][
                "type"
            ] == "ack"

            await proxy.cut()
            # New messages and events are refused as unavailable, never acked.
            for index in range(3):
                await client.send({"type": "message", "id": f"down-{index}", "text": "Hello?"})
                error = await client.recv()
                assert error["type"] == "error", error
                assert (error["code"], error["ref"]) == ("unavailable", f"down-{index}")
            await client.send(
                {
                    "type": "event",
                    "id": "ev-down",
                    "name": "page_view",
                    "at": "2026-01-01T00:00:00Z",
                }
            )
            error = await client.recv()
            assert (error["type"], error["code"], error["ref"]) == (
                "error",
                "unavailable",
                "ev-down",
            )
            # Operator reads are audited, so they too wait for the database.
            for command in ("sessions.list", "profile.get"):
                answer = await operator.call(command, user_id=welcome["user_id"])
                assert (answer["type"], answer["code"]) == ("error", "unavailable"), answer
            # The server stays up: it answers pings and probes, and says it is not ready.
            await client.send({"type": "ping", "id": "alive"})
            assert (await client.recv())["type"] == "pong"
            assert await http_status(srv, "/healthz") == 200
            assert await http_status(srv, "/readyz") == 503

            await proxy.restore()
            # It recovers by itself: the client resends what was refused, with the same id.
            frames = await resend_until_acked(client, "down-0", "Why was my transfer declined?")
            assert frames[-1]["type"] == "reply"
            assert await http_status(srv, "/readyz") == 200
            answer = await operator.call("profile.get", user_id=welcome["user_id"])
            assert answer["type"] == "result"
        turns = await srv.runtime.store.list_turns(welcome["session_id"])
        assert [(t.role, t.client_id) for t in turns if t.role == "user"] == [
            ("user", "before"),
            ("user", "down-0"),
        ], "nothing refused was stored, everything acked was"


async def resend_until_acked(client: Client, message_id: str, text: str) -> list[dict[str, Any]]:
    """Send the message until it is acked (the pool reconnects on its own), then its reply."""
    deadline = asyncio.get_running_loop().time() + RECOVERY_S
    while True:
        await client.send({"type": "message", "id": message_id, "text": text})
        first = await client.recv()
        if first["type"] == "ack":
            assert first["id"] == message_id
            return [first, *await client.recv_until("reply")]
        assert (first["type"], first["code"]) == ("error", "unavailable"), first
        assert asyncio.get_running_loop().time() < deadline, "did not recover"
        await asyncio.sleep(0.5)
