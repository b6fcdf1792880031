"""One /operator WebSocket: OperatorConnection signs the operator in, then answers commands.

Every command is checked against the operator's role (assistant.operators.roles), carried
out through the OperatorService (assistant/operators/service.py) or the operator store, and
written to the audit log. It never raises on client input: mistakes become
`error {code, message, ref}` frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from assistant.cluster.messages import Action, Call
from assistant.core.outbox import Outbox, Transport
from assistant.core.wire import CLOSE_POLICY, CLOSE_TRY_AGAIN, Ping, Pong
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
    ProfileErase,
    ProfileExport,
    ProfileGet,
    Result,
    Search,
    SessionRelease,
    SessionSay,
    SessionsList,
    SessionTakeover,
    SessionUnwatch,
    SessionWatch,
    TurnRelabel,
    decode_cursor,
    encode_cursor,
    parse_operator_frame,
    serialize,
)
from assistant.operators.roles import allowed, commands_for
from assistant.operators.service import CommandFailed, OperatorService
from assistant.operators.views import (
    export_json,
    live_session_json,
    operator_json,
    profile_view_json,
    summary_json,
    turn_json,
)
from profiles import Conflict, NotFound, OperatorRecord, StoreUnavailable, UserQuery

log = logging.getLogger(__name__)


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
        service.signed_out(self)
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
        self._service.signed_in(self, operator.role)
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
        service = self._service
        live = await service.live_sessions()
        stored = await service.ops.user_summaries({s["user_id"] for s in live})
        await self._audit(frame.type, None, results=len(live))
        return {"sessions": [live_session_json(s, stored.get(s["user_id"])) for s in live]}

    async def _watch(self, frame: SessionWatch) -> dict[str, Any]:
        service = self._service
        summary = await service.locate(frame.session_id)
        # Watch before reading the history, so that no turn falls between the two.
        await service.watch(frame.session_id, self)
        self._watching.add(frame.session_id)
        turns = await service.chat.store.list_turns(frame.session_id)
        # A session is its conversation: the dialogue state as of its last stored turn.
        conversation = await service.chat.store.get_conversation(frame.session_id)
        await self._audit(frame.type, summary["user_id"], session_id=frame.session_id)
        return {
            "session_id": frame.session_id,
            "user_id": summary["user_id"],
            "status": summary["status"],
            "operator": summary["operator"],
            "turns": [turn_json(t) for t in turns[-100:]],
            "dialogue_state": conversation.dialogue_state if conversation is not None else None,
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
