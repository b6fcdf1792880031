"""A connection's bounded send queue and the one task that drains it, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from assistant.core.wire import CLOSE_TRY_AGAIN, TransportClosed

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What server.py gives the conversation layer for one WebSocket.

    Both methods raise TransportClosed when the peer has gone away.
    """

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Outbox:
    """Frames leave in the order they were put; a client that stops reading is disconnected.

    `put` never blocks the producer: a full queue means the client is not keeping up, so
    what is queued is dropped (the session keeps it for replay) and the connection closes
    with 1013; the client reconnects and resumes from its last seq.
    """

    def __init__(self, transport: Transport, limit: int = 1000) -> None:
        self._transport = transport
        # Text frames; bytes are binary frames (audio on /voice).
        self._queue: asyncio.Queue[str | bytes | _Close] = asyncio.Queue(maxsize=limit + 1)
        self._limit = limit
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="outbox")

    def put(self, data: str | bytes) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._limit:
            log.warning("client not reading: send queue full, disconnecting")
            self._abandon(CLOSE_TRY_AGAIN, "send queue full")
            return
        self._queue.put_nowait(data)

    def _abandon(self, code: int, reason: str) -> None:
        """Drop what is queued and close now, without waiting for the drain task: it may be
        stuck in a send that waits for a peer who never reads (websockets' close is bounded
        by its close timeout)."""
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._close(code, reason), name="outbox-close")

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._transport.close(code, reason)
        except TransportClosed:
            pass  # a peer already gone leaves nothing to close
        except Exception:
            log.exception("closing failed")

    def close_soon(self, code: int, reason: str) -> None:
        """Close the transport after the frames already queued have been sent."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_Close(code, reason))

    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Close):
                    await self._transport.close(item.code, item.reason)
                    return
                await self._transport.send(item)
            except TransportClosed:
                # The session keeps its frames for replay.
                self.closed = True
                return
            except Exception:
                log.exception("sending failed; closing this connection's outbox")
                self.closed = True
                return

    async def stop(self) -> None:
        self.closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
