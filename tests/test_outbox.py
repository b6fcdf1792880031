"""The outbox tells a vanished peer (routine, quiet) from a fault in sending (logged).

Real server on port 0, real websockets clients. The network edge turns every failure of the
connection into TransportClosed, so the fault is injected at the transport's send: nothing a
client can do makes a healthy server's send fail otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from assistant import TransportClosed
from server import RunningServer, WebSocketTransport
from tests.conftest import ClientFactory

WAIT_S = 10.0


async def eventually(check: Callable[[], bool], within: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def watch_sends(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> list[BaseException]:
    """What the server's sends raise; with `fail_on`, a send of a frame holding it fails."""
    raised: list[BaseException] = []
    send = WebSocketTransport.send

    async def watched(self: WebSocketTransport, data: str | bytes) -> None:
        try:
            if fail_on is not None and isinstance(data, str) and fail_on in data:
                raise RuntimeError("frame encoder broke")
            await send(self, data)
        except BaseException as exc:
            raised.append(exc)
            raise

    monkeypatch.setattr(WebSocketTransport, "send", watched)
    return raised


async def test_a_vanished_peer_is_quiet(
    server: RunningServer,
    open_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raised = watch_sends(monkeypatch)
    caplog.set_level(logging.DEBUG)
    client = await open_client()
    # One write: the server reads ping, hello and the close together, answers the ping into
    # its outbox, and sends that pong while hello waits on the database: after the close.
    protocol = client.ws.protocol
    protocol.send_text(json.dumps({"type": "ping", "id": "p1"}).encode())
    protocol.send_text(json.dumps({"type": "hello", "user": {"external_id": "gone"}}).encode())
    await client.ws.close()

    await eventually(lambda: any(isinstance(exc, TransportClosed) for exc in raised))
    await eventually(lambda: not server.app.open)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]


async def test_a_fault_in_sending_is_logged(
    server: RunningServer,
    open_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raised = watch_sends(monkeypatch, fail_on='"id":"boom"')
    client = await open_client()
    await client.send({"type": "ping", "id": "fine"})
    assert await client.recv() == {"type": "pong", "seq": 0, "id": "fine"}

    await client.send({"type": "ping", "id": "boom"})
    await eventually(lambda: any(r.name == "assistant.core.outbox" for r in caplog.records))
    [record] = [r for r in caplog.records if r.name == "assistant.core.outbox"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert [type(exc) for exc in raised] == [RuntimeError]
