"""The role matrix: every /operator command against every role, on a real server.

What the issue specifies, written out here independently of assistant.operators.roles:
viewer may search and view; agent adds the live commands and relabelling; admin adds
export, erase and managing operators. Every allowed read is in the audit log, and a viewer
never receives a key nor erases anything.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from assistant.operators.protocol import COMMAND_TYPES
from server import RunningServer
from tests.conftest import ClientFactory
from tests.support.operator_helpers import make_operator, operator_client

VIEWER = {"profiles.search", "profile.get"}
AGENT = VIEWER | {
    "sessions.list",
    "session.watch",
    "session.unwatch",
    "session.takeover",
    "session.say",
    "session.release",
    "turn.relabel",
}
ADMIN = AGENT | {
    "profile.export",
    "profile.erase",
    "operators.list",
    "operators.create",
    "operators.revoke",
}
SPEC = {"viewer": VIEWER, "agent": AGENT, "admin": ADMIN}
READS = {"profiles.search", "profile.get", "profile.export", "sessions.list", "session.watch"}
# The order matters: say and release need the takeover before them.
ORDER = [
    "profiles.search",
    "profile.get",
    "profile.export",
    "sessions.list",
    "session.watch",
    "session.unwatch",
    "session.takeover",
    "session.say",
    "session.release",
    "turn.relabel",
    "operators.list",
    "operators.create",
    "operators.revoke",
    "profile.erase",
]


def test_the_matrix_covers_every_command() -> None:
    assert set(ORDER) == COMMAND_TYPES
    assert ADMIN == COMMAND_TYPES


@pytest.mark.parametrize("role", ["viewer", "agent", "admin"])
async def test_role_matrix(server: RunningServer, open_client: ClientFactory, role: str) -> None:
    customer = await open_client()
    welcome = await customer.hello(user={"external_id": f"matrix-{role}", "name": "Mat Rix"})
    session_id, user_id = welcome["session_id"], welcome["user_id"]
    await customer.send({"type": "message", "id": "m1", "text": "I lost my card"})
    await customer.recv_until("reply")
    turn_id = (await server.runtime.store.list_turns(session_id))[0].id
    doomed = await server.runtime.store.upsert_user("default", f"doomed-{role}")
    await server.runtime.operators.create_operator(f"spare-{role}", "viewer")

    fields: dict[str, dict[str, Any]] = {
        "profiles.search": {"q": "matrix"},
        "profile.get": {"user_id": user_id},
        "profile.export": {"user_id": user_id},
        "profile.erase": {"user_id": doomed.id},
        "sessions.list": {},
        "session.watch": {"session_id": session_id},
        "session.unwatch": {"session_id": session_id},
        "session.takeover": {"session_id": session_id},
        "session.say": {"session_id": session_id, "text": "hello from a person"},
        "session.release": {"session_id": session_id},
        "turn.relabel": {"turn_id": turn_id, "intent": "exchange_rate"},
        "operators.list": {},
        "operators.create": {"name": f"new-{role}", "role": "viewer"},
        "operators.revoke": {"name": f"spare-{role}"},
    }
    key = await make_operator(server, f"op-{role}", role)  # type: ignore[arg-type]
    ops = server.runtime.operators.ops
    async with operator_client(server, key) as client:
        me = await ops.list_operators()
        operator_id = next(o.id for o in me if o.name == f"op-{role}")
        for command in ORDER:
            before = len(await ops.list_audit(operator_id=operator_id))
            answer = await client.call(command, **fields[command])
            after = await ops.list_audit(operator_id=operator_id)
            if command in SPEC[role]:
                assert answer["type"] == "result", (role, command, answer)
                if command in READS:
                    assert len(after) == before + 1, (role, command)
                    assert after[-1].action == command
            else:
                assert answer["type"] == "error", (role, command, answer)
                assert answer["code"] == "forbidden", (role, command, answer)
                assert len(after) == before, "a refused command does nothing, audits nothing"
            if role != "admin":
                assert "csa_" not in json.dumps(answer), "only an admin ever receives a key"

    erased = await server.runtime.store.get_user(doomed.id)
    spare = next(o for o in await ops.list_operators() if o.name == f"spare-{role}")
    created = [o for o in await ops.list_operators() if o.name == f"new-{role}"]
    if role == "admin":
        assert erased is None and spare.revoked_at is not None and created
    else:
        assert erased is not None, "only an admin erases"
        assert spare.revoked_at is None and not created
    turn = await ops.get_turn(turn_id)
    assert turn is not None
    assert (turn.intent == "exchange_rate") == (role != "viewer")
