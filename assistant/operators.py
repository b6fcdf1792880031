"""The /operator route's logic: one OperatorConnection per WebSocket, live state in the service.

The service owns who watches which chat session and answers every command after checking
the operator's role (assistant.operator_roles) and writing the audit log. It never raises
on client input: mistakes become `error {code, message, ref}` frames.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from assistant.chat import ChatService
from assistant.operator_keys import new_key, parse_key, verify_secret
from assistant.operator_protocol import (
    Auth,
    Command,
    ErrorReply,
    OperatorError,
    OperatorErrorCode,
    OperatorsCreate,
    OperatorServerFrame,
    OperatorsList,
    OperatorsRevoke,
    Ping,
    Pong,
    ProfileErase,
    ProfileExport,
    ProfileGet,
    Result,
    Search,
    SessionRelease,
    SessionSay,
    SessionsList,
    SessionState,
    SessionTakeover,
    SessionTurn,
    SessionUnwatch,
    SessionWatch,
    TurnRelabel,
    decode_cursor,
    encode_cursor,
    parse_operator_frame,
    serialize,
)
from assistant.operator_roles import allowed, commands_for
from assistant.operator_views import (
    export_json,
    operator_json,
    profile_view_json,
    summary_json,
    turn_json,
    when,
)
from assistant.outbox import CLOSE_POLICY, Outbox, Transport
from assistant.protocol import OperatorJoined, OperatorLeft, OperatorMessage
from assistant.redaction import redact
from assistant.session import ChatSession, LiveTurn, OperatorHold
from profiles import (
    Conflict,
    NotFound,
    OperatorRecord,
    OperatorRole,
    OperatorStore,
    StoreUnavailable,
    UserQuery,
)

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """A command that cannot be done as asked; becomes an error frame."""

    def __init__(self, code: OperatorErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _live_turn_json(turn: LiveTurn) -> dict[str, Any]:
    return {
        "id": turn.turn_id,
        "role": turn.role,
        "text": turn.text,
        "intent": turn.intent,
        "emotion": turn.emotion,
        "at": when(turn.at),
    }


class OperatorService:
    """Live operator state: watchers per chat session, and the commands themselves."""

    def __init__(self, ops: OperatorStore, chat: ChatService) -> None:
        self.ops = ops
        self.chat = chat
        self._watchers: dict[str, set[OperatorConnection]] = {}
        chat.observer = self

    def connection(self, transport: Transport) -> OperatorConnection:
        return OperatorConnection(self, transport)

    # SessionObserver

    def on_turn(self, session: ChatSession, turn: LiveTurn) -> None:
        self._broadcast(session.id, SessionTurn(session.id, _live_turn_json(turn)))

    def on_closed(self, session: ChatSession) -> None:
        self._broadcast(session.id, SessionState(session.id, "closed"))
        self._watchers.pop(session.id, None)

    def _broadcast(self, session_id: str, frame: OperatorServerFrame) -> None:
        for watcher in list(self._watchers.get(session_id, ())):
            watcher.send(frame)

    def watch(self, session_id: str, connection: OperatorConnection) -> None:
        self._watchers.setdefault(session_id, set()).add(connection)

    def unwatch(self, session_id: str, connection: OperatorConnection) -> None:
        watchers = self._watchers.get(session_id)
        if watchers is not None:
            watchers.discard(connection)
            if not watchers:
                del self._watchers[session_id]

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

    def live_session(self, session_id: str) -> ChatSession:
        session = self.chat.sessions.get(session_id)
        if session is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no live session with that id")
        return session

    async def end_sessions_of(self, user_id: str) -> None:
        """Close the user's live sessions (before their data is erased)."""
        for session in [s for s in self.chat.sessions.values() if s.user.id == user_id]:
            self.chat.sessions.pop(session.id, None)
            await session.close()

    async def take_over(self, session: ChatSession, operator: OperatorRecord) -> None:
        holder = session.held_by
        if holder is not None and holder.operator_id != operator.id:
            raise CommandFailed(
                OperatorErrorCode.CONFLICT, f"{holder.name} has already taken this session over"
            )
        if holder is None:
            session.held_by = OperatorHold(operator.id, operator.name)
            session.waiting_for_operator = False
            await self.chat.store.set_conversation_status(session.id, "operator")
            session.emit(OperatorJoined(name=operator.name))
            self._broadcast(session.id, SessionState(session.id, "operator", operator.name))

    async def release(self, session: ChatSession) -> None:
        if session.held_by is None:
            return
        session.held_by = None
        session.released()
        await self.chat.store.set_conversation_status(session.id, "bot")
        session.emit(OperatorLeft())
        self._broadcast(session.id, SessionState(session.id, "bot"))

    async def say(self, session: ChatSession, operator: OperatorRecord, text: str) -> str:
        stored = await self.ops.add_operator_turn(session.id, redact(text))
        session.emit(OperatorMessage(text=text))
        self.on_turn(session, LiveTurn("operator", stored.text, stored.id, stored.created_at))
        session.last_activity = datetime.now(UTC)
        return stored.id

    def live_sessions(self) -> list[dict[str, Any]]:
        sessions = sorted(
            self.chat.sessions.values(),
            key=lambda s: (not s.waiting_for_operator, -s.last_activity.timestamp()),
        )
        return [
            {
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
            for s in sessions
        ]


Handler = Callable[[Any], Awaitable[dict[str, Any]]]


class OperatorConnection:
    """One WebSocket on /operator. server.py feeds it frames; it never raises on client input."""

    def __init__(self, service: OperatorService, transport: Transport) -> None:
        self._service = service
        self._outbox = Outbox(transport)
        self._outbox.start()
        self._seq = 0
        self.operator: OperatorRecord | None = None
        self._watching: set[str] = set()
        self._holding: set[str] = set()
        self._handlers: dict[type[Any], Handler] = {
            Search: self._search,
            ProfileGet: self._profile_get,
            ProfileExport: self._export,
            ProfileErase: self._erase,
            SessionsList: self._sessions,
            SessionWatch: self._watch,
            SessionUnwatch: self._unwatch,
            SessionTakeover: self._takeover,
            SessionSay: self._say,
            SessionRelease: self._release,
            TurnRelabel: self._relabel,
            OperatorsList: self._operators_list,
            OperatorsCreate: self._operators_create,
            OperatorsRevoke: self._operators_revoke,
        }

    def send(self, frame: OperatorServerFrame) -> None:
        self._seq += 1
        self._outbox.put(serialize(frame, self._seq))

    def _error(self, code: OperatorErrorCode, message: str, ref: str | None) -> None:
        self.send(ErrorReply(code, message, ref))

    async def on_binary(self, _data: bytes) -> None:
        self._error(
            OperatorErrorCode.BINARY_NOT_SUPPORTED, "/operator takes JSON text frames", None
        )

    async def on_text(self, text: str) -> None:
        frame = parse_operator_frame(text)
        if isinstance(frame, OperatorError):
            self.send(ErrorReply.of(frame))
            return
        if isinstance(frame, Ping):
            self.send(Pong(frame.id))
            return
        try:
            if isinstance(frame, Auth):
                await self._auth(frame)
                return
            await self._command(frame)
        except StoreUnavailable:
            self._error(OperatorErrorCode.UNAVAILABLE, "storage is unavailable", frame.id)
        except Exception:
            log.exception("operator command failed", extra={"type": frame.type})
            self._error(OperatorErrorCode.INTERNAL, "the command failed", frame.id)

    async def closed(self) -> None:
        service = self._service
        for session_id in list(self._watching):
            service.unwatch(session_id, self)
        # Nobody may be left waiting on an operator who went away: hand those sessions back.
        for session_id in list(self._holding):
            session = service.chat.sessions.get(session_id)
            if session is not None and self.operator is not None:
                holder = session.held_by
                if holder is not None and holder.operator_id == self.operator.id:
                    try:
                        await service.release(session)
                    except StoreUnavailable:
                        log.warning("could not record the release of %s", session_id)
        await self._outbox.stop()

    async def _auth(self, frame: Auth) -> None:
        if self.operator is not None:
            self._error(OperatorErrorCode.ALREADY_AUTHENTICATED, "already signed in", frame.id)
            return
        operator = await self._service.authenticate(frame.token)
        if operator is None:
            self._error(OperatorErrorCode.UNAUTHORIZED, "unknown or revoked key", frame.id)
            self._outbox.close_soon(CLOSE_POLICY, "unauthorized")
            return
        self.operator = operator
        self.send(
            Result(
                frame.id,
                {"operator": operator_json(operator), "commands": commands_for(operator.role)},
            )
        )

    async def _command(self, frame: Command) -> None:
        operator = self.operator
        if operator is None:
            self._error(
                OperatorErrorCode.AUTH_REQUIRED, "send 'auth' with your key first", frame.id
            )
            return
        if not allowed(operator.role, frame.type):
            self._error(
                OperatorErrorCode.FORBIDDEN,
                f"the {operator.role} role may not use {frame.type}",
                frame.id,
            )
            return
        try:
            data = await self._handlers[type(frame)](frame)
        except CommandFailed as failed:
            self._error(failed.code, failed.message, frame.id)
            return
        except NotFound:
            self._error(OperatorErrorCode.NOT_FOUND, "no such record", frame.id)
            return
        except Conflict as exc:
            self._error(OperatorErrorCode.CONFLICT, str(exc), frame.id)
            return
        self.send(Result(frame.id, data))

    async def _audit(self, action: str, subject: str | None = None, **detail: Any) -> None:
        assert self.operator is not None
        await self._service.ops.audit(self.operator.id, action, subject, detail)

    # reads

    async def _search(self, frame: Search) -> dict[str, Any]:
        after = None
        if frame.cursor is not None:
            after = decode_cursor(frame.cursor)
            if after is None:
                raise CommandFailed(OperatorErrorCode.INVALID_FIELD, "cursor: not a valid cursor")
        page = await self._service.ops.search_users(
            UserQuery(
                q=frame.q,
                emotion=frame.emotion,
                intent=frame.intent,
                seen_after=frame.seen_after,
                seen_before=frame.seen_before,
                limit=frame.limit,
                after=after,
            )
        )
        filters = [
            name
            for name in ("q", "emotion", "intent", "seen_after", "seen_before", "cursor")
            if getattr(frame, name) is not None
        ]
        # The audit names which filters were used, never their values (a name is content).
        await self._audit(frame.type, None, filters=filters, results=len(page.items))
        return {
            "items": [summary_json(item) for item in page.items],
            "cursor": encode_cursor(*page.next) if page.next else None,
        }

    async def _profile_get(self, frame: ProfileGet) -> dict[str, Any]:
        ops = self._service.ops
        view = await ops.profile_view(frame.user_id)
        if view is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no user with that id")
        neighbours = await ops.neighbours(frame.user_id)
        await self._audit(frame.type, frame.user_id)
        return {"profile": profile_view_json(view, neighbours)}

    async def _export(self, frame: ProfileExport) -> dict[str, Any]:
        data = await self._service.ops.export_user(frame.user_id)
        if data is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no user with that id")
        await self._audit(frame.type, frame.user_id)
        return {"export": export_json(data)}

    async def _erase(self, frame: ProfileErase) -> dict[str, Any]:
        assert self.operator is not None
        service = self._service
        await service.end_sessions_of(frame.user_id)
        async with service.chat.user_lock(frame.user_id):
            report = await service.ops.erase_user(frame.user_id, self.operator.id)
        if report is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no user with that id")
        return {"user_id": report.user_id, "rows": report.rows}

    async def _sessions(self, frame: SessionsList) -> dict[str, Any]:
        sessions = self._service.live_sessions()
        await self._audit(frame.type, None, results=len(sessions))
        return {"sessions": sessions}

    async def _watch(self, frame: SessionWatch) -> dict[str, Any]:
        service = self._service
        session = service.live_session(frame.session_id)
        turns = await service.chat.store.list_turns(session.id)
        service.watch(session.id, self)
        self._watching.add(session.id)
        await self._audit(frame.type, session.user.id, session_id=session.id)
        return {
            "session_id": session.id,
            "user_id": session.user.id,
            "status": "operator" if session.held_by else "bot",
            "operator": session.held_by.name if session.held_by else None,
            "turns": [turn_json(t) for t in turns[-100:]],
        }

    async def _unwatch(self, frame: SessionUnwatch) -> dict[str, Any]:
        self._service.unwatch(frame.session_id, self)
        self._watching.discard(frame.session_id)
        return {"session_id": frame.session_id}

    # live control

    async def _takeover(self, frame: SessionTakeover) -> dict[str, Any]:
        assert self.operator is not None
        service = self._service
        session = service.live_session(frame.session_id)
        await service.take_over(session, self.operator)
        self._holding.add(session.id)
        if session.id not in self._watching:
            service.watch(session.id, self)
            self._watching.add(session.id)
        await self._audit(frame.type, session.user.id, session_id=session.id)
        return {"session_id": session.id, "status": "operator", "operator": self.operator.name}

    def _held(self, session_id: str) -> ChatSession:
        assert self.operator is not None
        session = self._service.live_session(session_id)
        holder = session.held_by
        if holder is None or holder.operator_id != self.operator.id:
            raise CommandFailed(
                OperatorErrorCode.CONFLICT, "take the session over first (session.takeover)"
            )
        return session

    async def _say(self, frame: SessionSay) -> dict[str, Any]:
        assert self.operator is not None
        session = self._held(frame.session_id)
        turn_id = await self._service.say(session, self.operator, frame.text)
        await self._audit(frame.type, session.user.id, session_id=session.id, turn_id=turn_id)
        return {"session_id": session.id, "turn_id": turn_id}

    async def _release(self, frame: SessionRelease) -> dict[str, Any]:
        assert self.operator is not None
        session = self._service.live_session(frame.session_id)
        holder = session.held_by
        if (
            holder is not None
            and holder.operator_id != self.operator.id
            and self.operator.role != "admin"
        ):
            raise CommandFailed(OperatorErrorCode.CONFLICT, f"{holder.name} holds it")
        await self._service.release(session)
        self._holding.discard(session.id)
        await self._audit(frame.type, session.user.id, session_id=session.id)
        return {"session_id": session.id, "status": "bot"}

    async def _relabel(self, frame: TurnRelabel) -> dict[str, Any]:
        assert self.operator is not None
        turn = await self._service.ops.relabel_turn(
            frame.turn_id, self.operator.id, intent=frame.intent, emotion=frame.emotion
        )
        fields = [f for f in ("intent", "emotion") if getattr(frame, f) is not None]
        await self._audit(frame.type, turn.user_id, turn_id=turn.id, fields=fields)
        return {"turn": turn_json(turn)}

    # operators

    async def _operators_list(self, frame: OperatorsList) -> dict[str, Any]:
        operators = await self._service.ops.list_operators()
        return {"operators": [operator_json(o) for o in operators]}

    async def _operators_create(self, frame: OperatorsCreate) -> dict[str, Any]:
        operator, key = await self._service.create_operator(frame.name, frame.role)
        await self._audit(frame.type, None, operator_id=operator.id, role=operator.role)
        return {"operator": operator_json(operator), "key": key}

    async def _operators_revoke(self, frame: OperatorsRevoke) -> dict[str, Any]:
        operator = await self._service.ops.revoke_operator(frame.name)
        if operator is None:
            raise CommandFailed(OperatorErrorCode.NOT_FOUND, "no operator with that name")
        await self._audit(frame.type, None, operator_id=operator.id)
        return {"operator": operator_json(operator)}
