"""Export returns everything about a user; erase leaves no row about them in any table.

The store-level test runs on SQLite and PostgreSQL and checks every table of the schema,
so a table added later without erasure support fails here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from profiles import NewEvent, OperatorStore, ProfileUpdate, Store, TurnLabels
from profiles.models import Base
from server import RunningServer
from tests.conftest import ClientFactory
from tests.support.operator_helpers import make_operator, operator_client

SECRET_TEXT = "my account number is private-xyz"


async def _seed(store: Store, ops: OperatorStore, external_id: str) -> str:
    user = await store.upsert_user("default", external_id, name=f"Name of {external_id}")
    conv = await store.open_conversation(user.id, "chat")
    turn, _ = await store.add_user_turn(conv.id, user.id, "m1", f"{SECRET_TEXT} {external_id}")
    await store.add_events(
        user.id, conv.id, [NewEvent("e1", "page_view", datetime.now(UTC), {"path": "/x"})]
    )
    await store.finish_turn(
        turn.id,
        labels=TurnLabels("lost_card", 0.8, "sad", {"sad": 0.7}),
        reply_text="sorry to hear that",
        latency_ms=3.0,
        profile=ProfileUpdate(np.ones(8, np.float32), "v1", "turn", {"text": 1.0}, turns=1),
    )
    await ops.add_operator_turn(conv.id, "an operator says hi")
    await ops.relabel_turn(turn.id, "op", intent="card_lost", emotion="angry")
    await ops.audit("op", "profile.get", user.id)
    return user.id


async def _rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    async with store.transactions.tx() as session:
        for table in Base.metadata.sorted_tables:
            result = await session.execute(select(table))
            tables[table.name] = [dict(row._mapping) for row in result]
    return tables


def _mentions(row: dict[str, Any], needles: list[str]) -> bool:
    text = json.dumps({k: v for k, v in row.items() if not isinstance(v, bytes)}, default=str)
    return any(n in text for n in needles)


async def test_export_then_erase_leaves_nothing(db_url: str) -> None:
    store = Store.open(db_url)
    ops = OperatorStore(store)
    try:
        gone = await _seed(store, ops, "erase-me")
        kept = await _seed(store, ops, "keep-me")

        data = await ops.export_user(gone)
        assert data is not None
        assert data.user.external_id == "erase-me" and data.profile is not None
        assert len(data.turns) == 3 and {t.role for t in data.turns} == {
            "user",
            "assistant",
            "operator",
        }
        assert len(data.events) == 1 and len(data.snapshots) == 1
        assert len(data.corrections) == 2 and len(data.conversations) == 1
        assert [a.action for a in data.audit] == ["profile.get"]

        report = await ops.erase_user(gone, "admin-op")
        assert report is not None and report.rows["users"] == 1 and report.rows["turns"] == 3

        rows = await _rows(store)
        assert set(rows) == {t.name for t in Base.metadata.sorted_tables}
        needles = [gone, "erase-me", f"{SECRET_TEXT} erase-me"]
        for table, table_rows in rows.items():
            for row in table_rows:
                if table == "audit_log":
                    # Audit entries stay, naming the user by id only and holding no content.
                    assert not _mentions(row, needles[1:]), row
                    continue
                assert not _mentions(row, needles), (table, row)
        audit = [r for r in rows["audit_log"] if r["subject_user_id"] == gone]
        assert [r["action"] for r in audit] == ["profile.get", "profile.erase"]
        assert audit[-1]["detail"]["rows"]["users"] == 1

        assert await ops.export_user(gone) is None
        assert await ops.erase_user(gone, "admin-op") is None
        # The other user is untouched.
        other = await ops.export_user(kept)
        assert other is not None and len(other.turns) == 3 and len(other.corrections) == 2
    finally:
        await store.close()


async def test_erase_over_the_protocol_ends_the_live_session(
    server: RunningServer, open_client: ClientFactory
) -> None:
    customer = await open_client()
    welcome = await customer.hello(user={"external_id": "live-erase", "name": "Short Lived"})
    user_id = welcome["user_id"]
    await customer.send({"type": "message", "id": "m1", "text": "please forget me"})
    await customer.recv_until("reply")
    key = await make_operator(server, "dpo", "admin")
    async with operator_client(server, key) as admin:
        exported = (await admin.ok("profile.export", user_id=user_id))["export"]
        assert exported["user"]["external_id"] == "live-erase"
        assert [t["role"] for t in exported["turns"]] == ["user", "assistant"]
        assert len(exported["profile"]["vector"]) == server.runtime.models.dim
        erased = await admin.ok("profile.erase", user_id=user_id)
        assert erased["rows"]["users"] == 1
        again = await admin.call("profile.export", user_id=user_id)
        assert again["type"] == "error" and again["code"] == "not_found"
        assert (await admin.call("profile.get", user_id=user_id))["code"] == "not_found"
        live = (await admin.ok("sessions.list"))["sessions"]
        assert welcome["session_id"] not in [s["session_id"] for s in live]
    rows = await _rows(server.runtime.store)
    for table, table_rows in rows.items():
        if table != "audit_log":
            assert not any(_mentions(r, [user_id, "live-erase"]) for r in table_rows), table
