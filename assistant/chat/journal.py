"""The frame journal: every chat session frame is stored before it is sent.

A client that saw frame `seq` can therefore always be given what follows it, even after the
server was killed: a restarted server rebuilds the session from the stored frames. Frames of
all sessions are written together (group commit): one transaction takes whatever queued up
while the previous one ran, so a burst costs a few commits, not one per frame.

While the database is unreachable the writer retries with backoff and the frames wait: the
session streams pause (nothing unstored is sent) and resume in order when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from profiles import Conflict, NotFound, Store, StoredFrame, StoreUnavailable

log = logging.getLogger(__name__)

# Frames written in one transaction at most.
MAX_BATCH = 512
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class _Pending:
    frame: StoredFrame
    stored: Callable[[], None]  # called once the frame is stored (or can never be)


class FrameJournal:
    """Owns the writer task: `start` it, `append` frames, `stop` it (flushing what it can)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Conversation -> frames below this seq are no longer needed for replay.
        self._prunes: dict[str, int] = {}
        self.outage = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name="frame-journal")

    def append(self, frame: StoredFrame, stored: Callable[[], None]) -> None:
        self._queue.put_nowait(_Pending(frame, stored))

    def prune(self, conversation_id: str, *, below: int) -> None:
        """Drop the conversation's frames below `below` (soon, by the writer)."""
        self._prunes[conversation_id] = below

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Give queued frames `flush_timeout_s` to be stored, then stop the writer."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._store_batch(batch)
            for pending in batch:
                pending.stored()
                self._queue.task_done()
            while self._prunes:
                conversation_id, below = self._prunes.popitem()
                # Best effort: a prune that fails leaves rows that the next one removes.
                with contextlib.suppress(StoreUnavailable):
                    await self._store.drop_frames(conversation_id, below=below)

    async def _store_batch(self, batch: list[_Pending]) -> None:
        try:
            await self._retrying([p.frame for p in batch])
        except (Conflict, NotFound):
            # Store what can be, skip the rest. NotFound: the conversation was erased
            # meanwhile, nobody is left to send to. Conflict: another replica numbered frames
            # of this session too, which only happens when replicas that cannot see each
            # other both served it.
            for pending in batch:
                try:
                    await self._retrying([pending.frame])
                except (Conflict, NotFound) as exc:
                    log.warning(
                        "session frame not stored: %s",
                        type(exc).__name__,
                        extra={"session_id": pending.frame.conversation_id},
                    )

    async def _retrying(self, frames: list[StoredFrame]) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._store.append_frames(frames)
            except StoreUnavailable:
                if not self.outage:
                    log.warning("database unreachable: session frames wait to be stored")
                    self.outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.outage:
                log.warning("database reachable again: session frames are stored")
                self.outage = False
            return
