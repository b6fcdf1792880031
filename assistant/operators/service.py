"""The /operator route's shared state: OperatorService, one for all operators' connections.

It knows who watches which chat session, applies the session commands (take over, say,
release) on whichever replica holds the session, and checks operators' keys. Each WebSocket
gets an OperatorConnection (assistant/operators/connection.py), which checks every command
against the operator's role and writes the audit log.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from assistant.chat.protocol import OperatorJoined, OperatorLeft, OperatorMessage
from assistant.chat.service import ChatService
from assistant.chat.session import ChatSession, LiveTurn, OperatorHold
from assistant.cluster.messages import Answer, Call
from assistant.core.redaction import redact
from assistant.operators.keys import new_key, parse_key, verify_secret
from assistant.operators.protocol import (
    OperatorErrorCode,
    OperatorServerFrame,
    SessionState,
    SessionTurn,
    to_dict,
)
from assistant.operators.roles import allowed
from assistant.operators.sign_in_throttle import AuthThrottle, AuthThrottleConfig
from assistant.operators.views import live_turn_json, when
from profiles import OperatorRecord, OperatorRole, OperatorStore, StoreUnavailable

# How long a waiting customer's reply waits for other replicas' count of operators; a slow
# Redis counts as nobody there, so the reply never promises a person it could not see.
STAFF_CHECK_S = 0.5


class CommandFailed(Exception):
    """A command that cannot be done as asked; becomes an error frame."""

    def __init__(self, code: OperatorErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _live_frame(session_id: str, data: dict[str, Any]) -> SessionTurn | SessionState | None:
    """A frame another replica published about a session, typed again (None: not one)."""
    if data.get("type") == "session.turn" and isinstance(data.get("turn"), dict):
        return SessionTurn(session_id, data["turn"])
    status, operator = data.get("status"), data.get("operator")
    if data.get("type") == "session.state" and isinstance(status, str):
        return SessionState(session_id, status, operator if isinstance(operator, str) else None)
    return None


def _failure(answer: Answer) -> CommandFailed:
    try:
        code = OperatorErrorCode(answer.code or "")
    except ValueError:
        code = OperatorErrorCode.INTERNAL
    return CommandFailed(code, answer.message or "the command failed")


def _recency(summary: dict[str, Any]) -> tuple[bool, float]:
    """Sessions waiting for an operator first, then the most recently active."""
    at = datetime.fromisoformat(summary["last_activity_at"]).timestamp()
    return (not summary["waiting"], -at)


class Watcher(Protocol):
    """An operator's connection watching sessions: told every live frame about them."""

    def send(self, frame: OperatorServerFrame) -> None: ...


class OperatorService:
    """Live operator state: watchers per chat session, and the commands themselves.

    A session may be held by another replica: commands then travel to it through the
    cluster, and watchers here receive what that replica publishes about the session.
    """

    def __init__(
        self, ops: OperatorStore, chat: ChatService, throttle: AuthThrottle | None = None
    ) -> None:
        self.ops = ops
        self.chat = chat
        self.throttle = throttle or AuthThrottle(AuthThrottleConfig())
        self.cluster = chat.cluster
        self._watchers: dict[str, set[Watcher]] = {}
        # Connections of signed-in operators whose role may take a session over.
        self._staff: set[object] = set()
        chat.observer = self
        self.cluster.attach(self)

    # SessionObserver

    def on_turn(self, session: ChatSession, turn: LiveTurn) -> None:
        self._announce(SessionTurn(session.id, live_turn_json(turn)))

    def on_closed(self, session: ChatSession) -> None:
        self._announce(SessionState(session.id, "closed"))
        self._watchers.pop(session.id, None)

    async def operators_online(self) -> bool:
        if self._staff:
            return True
        try:
            async with asyncio.timeout(STAFF_CHECK_S):
                return await self.cluster.operators_elsewhere() > 0
        except TimeoutError:
            return False

    def signed_in(self, connection: object, role: str) -> None:
        if allowed(role, "session.takeover"):
            self._staff.add(connection)
            self.cluster.presence_changed()

    def signed_out(self, connection: object) -> None:
        if connection in self._staff:
            self._staff.discard(connection)
            self.cluster.presence_changed()

    def _announce(self, frame: SessionTurn | SessionState) -> None:
        """Tell the session's watchers here and on every other replica."""
        self._broadcast(frame.session_id, frame)
        data = to_dict(frame, 0)
        del data["seq"]
        self.cluster.publish_live(frame.session_id, data)

    def _broadcast(self, session_id: str, frame: OperatorServerFrame) -> None:
        for watcher in list(self._watchers.get(session_id, ())):
            watcher.send(frame)

    async def watch(self, session_id: str, watcher: Watcher) -> None:
        watchers = self._watchers.setdefault(session_id, set())
        watchers.add(watcher)
        if len(watchers) == 1:
            # Followed wherever it is held, so the watch survives a move between replicas.
            await self.cluster.follow(session_id)

    async def unwatch(self, session_id: str, watcher: Watcher) -> None:
        watchers = self._watchers.get(session_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[session_id]
                await self.cluster.unfollow(session_id)

    # cluster.Replica

    def session_summaries(self) -> dict[str, dict[str, Any]]:
        return {s.id: self._summary(s) for s in self.chat.sessions.values()}

    def operators_signed_in(self) -> int:
        return len(self._staff)

    def deliver_live(self, session_id: str, frame: dict[str, Any]) -> None:
        typed = _live_frame(session_id, frame)
        if typed is not None:
            self._broadcast(session_id, typed)

    async def handle_call(self, call: Call) -> Answer:
        """A command from another replica about a session held here (or about a user)."""
        try:
            if call.action == "handover":
                assert call.session_id is not None and call.user_id is not None
                parked = await self.chat.hand_off(call.session_id, call.user_id)
                if parked is False:
                    return Answer(call.id, code="forbidden", message="not that user's session")
                return Answer(call.id, data={"parked": bool(parked)})
            if call.action == "end_user":
                assert call.user_id is not None
                await self._end_local_sessions(call.user_id)
                return Answer(call.id, data={})
            session = self.chat.sessions.get(call.session_id or "")
            if session is None:
                return Answer(call.id, code="not_found", message="no live session with that id")
            return Answer(call.id, data=await self._apply(session, call))
        except CommandFailed as failed:
            return Answer(call.id, code=failed.code.value, message=failed.message)
        except StoreUnavailable:
            return Answer(call.id, code="unavailable", message="storage is unavailable")

    async def authenticate(self, token: str) -> OperatorRecord | None:
        parsed = parse_key(token)
        if parsed is None:
            return None
        operator = await self.ops.get_operator(parsed.operator_id)
        if operator is None or operator.revoked_at is not None:
            return None
        if not await asyncio.to_thread(verify_secret, parsed.secret, operator.key_hash):
            return None
        return operator

    async def create_operator(self, name: str, role: OperatorRole) -> tuple[OperatorRecord, str]:
        """A new operator and its key, shown once; only the key's hash is stored."""
        operator_id = uuid.uuid4().hex
        key, key_hash = await asyncio.to_thread(new_key, operator_id)
        return await self.ops.create_operator(operator_id, name, role, key_hash), key

    async def locate(self, session_id: str) -> dict[str, Any]:
        """The summary of a live session held here or on another replica."""
        session = self.chat.sessions.get(session_id)
        if session is not None:
            return self._summary(session)
        located = await self.cluster.locate(session_id)
        if located is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no live session with that id")
        return located[1]

    async def end_sessions_of(self, user_id: str) -> None:
        """Close the user's live sessions on every replica (before their data is erased)."""
        await self._end_local_sessions(user_id)
        await self.cluster.call_all(self.cluster.new_call("end_user", user_id=user_id))
        # Sessions parked for another replica hold the conversation's frames: drop them too.
        turns = await self.chat.store.list_user_turns(user_id)
        for conversation_id in {t.conversation_id for t in turns}:
            await self.cluster.forget(conversation_id)

    async def _end_local_sessions(self, user_id: str) -> None:
        for session in [s for s in self.chat.sessions.values() if s.user.id == user_id]:
            self.chat.sessions.pop(session.id, None)
            await session.close()

    async def control(self, call: Call) -> dict[str, Any]:
        """Apply an operator's command to a session, on whichever replica holds it.

        The result carries the session's `user_id` (for the audit log) beside its data.
        """
        assert call.session_id is not None
        session = self.chat.sessions.get(call.session_id)
        if session is not None:
            return await self._apply(session, call)
        located = await self.cluster.locate(call.session_id)
        if located is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no live session with that id")
        answer = await self.cluster.call(located[0], call)
        if answer is None:
            raise CommandFailed(
                OperatorErrorCode.UNAVAILABLE, "the replica holding that session did not answer"
            )
        if answer.code is not None:
            raise _failure(answer)
        return answer.data or {}

    async def _apply(self, session: ChatSession, call: Call) -> dict[str, Any]:
        holder = session.held_by
        result: dict[str, Any] = {"session_id": session.id, "user_id": session.user.id}
        if call.action == "takeover":
            assert call.operator_id is not None and call.operator_name is not None
            await self.take_over(session, OperatorHold(call.operator_id, call.operator_name))
            return {**result, "status": "operator", "operator": call.operator_name}
        if call.action == "say":
            if holder is None or holder.operator_id != call.operator_id:
                raise CommandFailed(
                    OperatorErrorCode.CONFLICT, "take the session over first (session.takeover)"
                )
            assert call.text is not None
            return {**result, "turn_id": await self.say(session, call.text)}
        if call.action == "release":
            others = holder is not None and holder.operator_id != call.operator_id
            if others and call.role != "admin":
                assert holder is not None
                raise CommandFailed(OperatorErrorCode.CONFLICT, f"{holder.name} holds it")
            await self.release(session)
            return {**result, "status": "bot"}
        raise CommandFailed(OperatorErrorCode.INTERNAL, f"{call.action} is not a session command")

    async def take_over(self, session: ChatSession, operator: OperatorHold) -> None:
        holder = session.held_by
        if holder is not None and holder.operator_id != operator.operator_id:
            raise CommandFailed(
                OperatorErrorCode.CONFLICT, f"{holder.name} has already taken this session over"
            )
        if holder is None:
            session.held_by = operator
            session.waiting_for_operator = False
            await self.chat.store.set_conversation_status(session.id, "operator")
            session.emit(OperatorJoined(name=operator.name))
            self._announce(SessionState(session.id, "operator", operator.name))

    async def release(self, session: ChatSession) -> None:
        if session.held_by is None:
            return
        session.held_by = None
        session.released()
        await self.chat.store.set_conversation_status(session.id, "bot")
        session.emit(OperatorLeft())
        self._announce(SessionState(session.id, "bot"))

    async def say(self, session: ChatSession, text: str) -> str:
        stored = await self.ops.add_operator_turn(session.id, redact(text))
        session.emit(OperatorMessage(text=text))
        self.on_turn(session, LiveTurn("operator", stored.text, stored.id, stored.created_at))
        session.last_activity = datetime.now(UTC)
        return stored.id

    @staticmethod
    def _summary(s: ChatSession) -> dict[str, Any]:
        return {
            "session_id": s.id,
            "user_id": s.user.id,
            "external_id": s.user.external_id,
            "name": s.user.name,
            "channel": s.conversation.channel,
            "status": "operator" if s.held_by else "bot",
            "operator": s.held_by.name if s.held_by else None,
            "waiting": s.waiting_for_operator,
            "emotion": s.emotion,
            "intent": s.intent,
            "connected": s.detached_since is None,
            "last_activity_at": when(s.last_activity),
        }

    async def live_sessions(self) -> list[dict[str, Any]]:
        """Live sessions of every replica."""
        local = self.session_summaries()
        remote = [s for s in await self.cluster.remote_sessions() if s["session_id"] not in local]
        return sorted([*local.values(), *remote], key=_recency)
