"""A chat session: its numbered frame stream, its replay buffer and its turn worker.

The session outlives any one WebSocket: a connection attaches an Outbox, a drop detaches
it, and turns in flight keep producing frames into the replay buffer so that a client who
reconnects with `last_seq` gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from assistant.outbox import CLOSE_NORMAL, Outbox
from assistant.protocol import (
    ErrorCode,
    ErrorFrame,
    Reply,
    ReplyDelta,
    ServerFrame,
    serialize,
)
from assistant.replies import compose_acknowledgement, stream_chunks
from fusion import Overloaded
from profiles import ConversationRecord, ProfileUpdate, StoreUnavailable, TurnLabels, UserRecord

if TYPE_CHECKING:
    from assistant.chat import ChatService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingTurn:
    turn_id: str
    client_id: str
    text: str
    received: float  # time.perf_counter() when the frame arrived


class ChatSession:
    def __init__(
        self,
        service: ChatService,
        user: UserRecord,
        conversation: ConversationRecord,
        *,
        replay_frames: int,
        max_pending_turns: int = 16,
    ) -> None:
        self.id = conversation.id
        self.user = user
        self.conversation = conversation
        self._service = service
        self._seq = 0
        self._log: deque[tuple[int, str]] = deque(maxlen=replay_frames)
        self._outbox: Outbox | None = None
        self._turns: asyncio.Queue[PendingTurn] = asyncio.Queue(maxsize=max_pending_turns)
        self._worker = asyncio.create_task(self._run_turns(), name=f"turns-{self.id}")
        self.detached_since: float | None = time.monotonic()

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def has_room(self) -> bool:
        return not self._turns.full()

    def emit(self, frame: ServerFrame) -> int:
        """Number the frame, keep it for replay and send it if a client is attached."""
        self._seq += 1
        text = serialize(frame, self._seq)
        self._log.append((self._seq, text))
        if self._outbox is not None:
            self._outbox.put(text)
        return self._seq

    def attach(self, outbox: Outbox, last_seq: int) -> None:
        """Make `outbox` the session's connection and send it every frame after `last_seq`."""
        previous, self._outbox = self._outbox, outbox
        if previous is not None and previous is not outbox:
            previous.close_soon(CLOSE_NORMAL, "session resumed on another connection")
        self.detached_since = None
        for seq, text in self._log:
            if seq > last_seq:
                outbox.put(text)

    def detach(self, outbox: Outbox) -> None:
        if self._outbox is outbox:
            self._outbox = None
            self.detached_since = time.monotonic()

    def enqueue(self, turn: PendingTurn) -> None:
        self._turns.put_nowait(turn)

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._outbox is not None:
            self._outbox.close_soon(CLOSE_NORMAL, "session closed")
            self._outbox = None

    async def _run_turns(self) -> None:
        while True:
            turn = await self._turns.get()
            try:
                await self._answer(turn)
            except StoreUnavailable:
                self.emit(
                    ErrorFrame(ErrorCode.UNAVAILABLE, "storage is unavailable", turn.client_id)
                )
            except Overloaded:
                self.emit(ErrorFrame(ErrorCode.OVERLOADED, "models are overloaded", turn.client_id))
            except Exception:
                log.exception("turn failed", extra={"session_id": self.id})
                self.emit(ErrorFrame(ErrorCode.INTERNAL, "the turn failed", turn.client_id))

    async def _answer(self, turn: PendingTurn) -> None:
        service = self._service
        observation = await service.models.encode_text(turn.text)
        async with service.user_lock(self.user.id):
            profile = await service.store.get_profile(self.user.id)
            now = datetime.now(UTC)
            dt_s = (now - profile.updated_at).total_seconds() if profile else 0.0
            vector = service.models.update_profile(
                profile.vector if profile else None, observation, dt_s
            )
            text = compose_acknowledgement()
            for chunk in stream_chunks(text):
                self.emit(ReplyDelta(turn_id=turn.turn_id, text=chunk))
            await service.store.finish_turn(
                turn.turn_id,
                labels=TurnLabels(),
                reply_text=text,
                latency_ms=(time.perf_counter() - turn.received) * 1000.0,
                profile=ProfileUpdate(
                    vector=vector,
                    model_version=service.models.model_version,
                    reason="turn",
                    modality_contributions={"text": 1.0},
                    turns=1,
                ),
            )
        self.emit(Reply(turn_id=turn.turn_id, text=text, handoff=False))
