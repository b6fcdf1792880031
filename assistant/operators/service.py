"""The /operator route's logic: one OperatorConnection per WebSocket, live state in the service.

The service owns who watches which chat session and answers every command after checking
the operator's role (assistant.operators.roles) and writing the audit log. It never raises
on client input: mistakes become `error {code, message, ref}` frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from assistant.chat.connection import ChatService
from assistant.chat.protocol import OperatorJoined, OperatorLeft, OperatorMessage
from assistant.chat.session import ChatSession, LiveTurn, OperatorHold
from assistant.cluster.messages import Action, Answer, Call
from assistant.core.outbox import Outbox, Transport
from assistant.core.redaction import redact
from assistant.core.wire import CLOSE_POLICY, CLOSE_TRY_AGAIN
from assistant.operators.keys import new_key, parse_key, verify_secret
from assistant.operators.protocol import (
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
    to_dict,
)
from assistant.operators.roles import allowed, commands_for
from assistant.operators.sign_in_throttle import AuthThrottle, AuthThrottleConfig
from assistant.operators.views import (
    export_json,
    operator_json,
    profile_view_json,
    summary_json,
    turn_json,
    when,
)
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
        self._watchers: dict[str, set[OperatorConnection]] = {}
        chat.observer = self
        self.cluster.attach(self)

    def connection(self, transport: Transport, peer: str = "") -> OperatorConnection:
        """`peer` is the client's address: failed sign-ins are throttled per address."""
        return OperatorConnection(self, transport, peer)

    # SessionObserver

    def on_turn(self, session: ChatSession, turn: LiveTurn) -> None:
        self._announce(SessionTurn(session.id, _live_turn_json(turn)))

    def on_closed(self, session: ChatSession) -> None:
        self._announce(SessionState(session.id, "closed"))
        self._watchers.pop(session.id, None)

    def _announce(self, frame: SessionTurn | SessionState) -> None:
        """Tell the session's watchers here and on every other replica."""
        self._broadcast(frame.session_id, frame)
        data = to_dict(frame, 0)
        del data["seq"]
        self.cluster.publish_live(frame.session_id, data)

    def _broadcast(self, session_id: str, frame: OperatorServerFrame) -> None:
        for watcher in list(self._watchers.get(session_id, ())):
            watcher.send(frame)

    async def watch(self, session_id: str, connection: OperatorConnection) -> None:
        watchers = self._watchers.setdefault(session_id, set())
        watchers.add(connection)
        if len(watchers) == 1:
            # Followed wherever it is held, so the watch survives a move between replicas.
            await self.cluster.follow(session_id)

    async def unwatch(self, session_id: str, connection: OperatorConnection) -> None:
        watchers = self._watchers.get(session_id)
        if watchers is not None:
            watchers.discard(connection)
            if not watchers:
                del self._watchers[session_id]
                await self.cluster.unfollow(session_id)

    # cluster.Replica

    def session_summaries(self) -> dict[str, dict[str, Any]]:
        return {s.id: self._summary(s) for s in self.chat.sessions.values()}

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


Handler = Callable[[Any], Awaitable[dict[str, Any]]]


class OperatorConnection:
    """One WebSocket on /operator. server.py feeds it frames; it never raises on client input."""

    def __init__(self, service: OperatorService, transport: Transport, peer: str = "") -> None:
        self._service = service
        self._peer = peer
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

    @property
    def started(self) -> bool:
        return self.operator is not None

    def send(self, frame: OperatorServerFrame) -> None:
        if isinstance(frame, ErrorReply):
            self._service.chat.metrics.error("/operator", frame.code.value)
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
            await service.unwatch(session_id, self)
        # Nobody may be left waiting on an operator who went away: hand those sessions back,
        # wherever they are held. Not when this replica is draining: the operator comes
        # back through another replica and keeps the sessions.
        if self.operator is not None and not service.chat.draining:
            for session_id in list(self._holding):
                # Without a role the release leaves another operator's hold alone.
                release = self._call("release", session_id, role=None)
                try:
                    await service.control(release)
                except CommandFailed:
                    pass  # the session ended, or someone else holds it now
                except StoreUnavailable:
                    log.warning(
                        "could not record a release on disconnect", extra={"session_id": session_id}
                    )
        await self._outbox.stop()

    def _call(
        self, action: Action, session_id: str, text: str | None = None, *, role: str | None = ""
    ) -> Call:
        """The command as the cluster carries it; `role` "" means this operator's own."""
        assert self.operator is not None
        return self._service.cluster.new_call(
            action,
            session_id=session_id,
            operator_id=self.operator.id,
            operator_name=self.operator.name,
            role=self.operator.role if role == "" else role,
            text=text,
        )

    async def _auth(self, frame: Auth) -> None:
        if self.operator is not None:
            self._error(OperatorErrorCode.ALREADY_AUTHENTICATED, "already signed in", frame.id)
            return
        throttle = self._service.throttle
        wait_s = throttle.retry_after(self._peer)
        if wait_s > 0:
            # Locked out: refused without looking at the key, so guessing costs no scrypt.
            self._error(
                OperatorErrorCode.RATE_LIMITED,
                f"too many failed sign-ins from this address; try again in {math.ceil(wait_s)} s",
                frame.id,
            )
            self._outbox.close_soon(CLOSE_TRY_AGAIN, "rate limited")
            return
        operator = await self._service.authenticate(frame.token)
        if operator is None:
            throttle.failed(self._peer)
            await asyncio.sleep(throttle.config.failure_delay_s)
            self._error(OperatorErrorCode.UNAUTHORIZED, "unknown or revoked key", frame.id)
            self._outbox.close_soon(CLOSE_POLICY, "unauthorized")
            return
        throttle.succeeded(self._peer)
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
        sessions = await self._service.live_sessions()
        await self._audit(frame.type, None, results=len(sessions))
        return {"sessions": sessions}

    async def _watch(self, frame: SessionWatch) -> dict[str, Any]:
        service = self._service
        summary = await service.locate(frame.session_id)
        # Watch before reading the history, so that no turn falls between the two.
        await service.watch(frame.session_id, self)
        self._watching.add(frame.session_id)
        turns = await service.chat.store.list_turns(frame.session_id)
        await self._audit(frame.type, summary["user_id"], session_id=frame.session_id)
        return {
            "session_id": frame.session_id,
            "user_id": summary["user_id"],
            "status": summary["status"],
            "operator": summary["operator"],
            "turns": [turn_json(t) for t in turns[-100:]],
        }

    async def _unwatch(self, frame: SessionUnwatch) -> dict[str, Any]:
        await self._service.unwatch(frame.session_id, self)
        self._watching.discard(frame.session_id)
        return {"session_id": frame.session_id}

    # live control

    async def _takeover(self, frame: SessionTakeover) -> dict[str, Any]:
        service = self._service
        result = await service.control(self._call("takeover", frame.session_id))
        user_id = result.pop("user_id")
        self._holding.add(frame.session_id)
        if frame.session_id not in self._watching:
            await service.watch(frame.session_id, self)
            self._watching.add(frame.session_id)
        await self._audit(frame.type, user_id, session_id=frame.session_id)
        return result

    async def _say(self, frame: SessionSay) -> dict[str, Any]:
        result = await self._service.control(self._call("say", frame.session_id, frame.text))
        user_id = result.pop("user_id")
        await self._audit(
            frame.type, user_id, session_id=frame.session_id, turn_id=result["turn_id"]
        )
        return result

    async def _release(self, frame: SessionRelease) -> dict[str, Any]:
        result = await self._service.control(self._call("release", frame.session_id))
        user_id = result.pop("user_id")
        self._holding.discard(frame.session_id)
        await self._audit(frame.type, user_id, session_id=frame.session_id)
        return result

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
