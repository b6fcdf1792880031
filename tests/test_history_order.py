"""History in the order it was said: each reply right after the message it answers.

A reply's row is written after its frame went out, often after the customer's next message
was stored. On a real server with a chat model at the LLM boundary (LangChain's fake chat
model, recording its prompts), on SQLite and PostgreSQL: one conversation whose client waits
for every reply, another whose client sends all its messages at once. The export, the
console's views of a conversation and every prompt's conversation window list the turns as
they were said. Then revision 0004 on a database written out of order before positions.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from websockets.asyncio.client import connect

from assistant import Models, ResponseGenerator, Settings
from profiles import Store, TurnLabels
from profiles.engine import create_engine
from profiles.migrate import check, upgrade
from profiles.operator_store import OperatorStore
from server import running
from tests.conftest import Client
from tests.support.operator_helpers import make_operator, operator_client
from tests.test_knowledge_base import shared_kb, shared_retriever
from tests.test_privacy import PromptRecorder

ASSISTANT = Path(sys.executable).parent / "assistant"

WAITING = [
    "How do I activate my new card?",
    "Where can I see the PIN of my card?",
    "How long does a transfer to another bank take?",
    "Can I top up my account with a bank transfer?",
    "What exchange rate do you use for foreign payments?",
    "How do I change the address on my account?",
    "Is there a fee for withdrawing cash at an ATM?",
    "How do I freeze my card in the app?",
    "Why is my transfer still pending?",
    "How do I get a refund for an item I returned?",
]
AT_ONCE = [
    "How do I order a physical card?",
    "Which currencies can I hold in my account?",
    "How do I verify my identity?",
    "Can I pay with Apple Pay or Google Pay?",
    "When will my new card be delivered?",
    "How do I close my account?",
    "What are the limits for topping up?",
    "How do I add a new beneficiary?",
    "Can I cancel a transfer I just made?",
    "How do I change my passcode?",
]

# A conversation as the client saw it: (user turn id, message, reply text) in order.
Said = list[tuple[str, str, str]]


async def _waiting(client: Client, texts: Sequence[str]) -> Said:
    said: Said = []
    for n, text in enumerate(texts):
        await client.send({"type": "message", "id": f"w{n}", "text": text})
        reply = (await client.recv_until("reply"))[-1]
        said.append((reply["turn_id"], text, reply["text"]))
    return said


async def _at_once(client: Client, texts: Sequence[str]) -> Said:
    for n, text in enumerate(texts):
        await client.send({"type": "message", "id": f"b{n}", "text": text})
    replies: list[dict[str, Any]] = []
    while len(replies) < len(texts):
        replies.append((await client.recv_until("reply"))[-1])
    # One session answers its messages one at a time, in the order they came.
    return [(r["turn_id"], text, r["text"]) for r, text in zip(replies, texts, strict=True)]


def _expected(said: Said) -> list[tuple[str, str]]:
    return [pair for _, text, reply in said for pair in (("user", text), ("assistant", reply))]


def _check_listed(turns: Sequence[dict[str, Any]], said: Said, where: str) -> None:
    """`turns` (turn JSON) are the conversation `said`, each reply right after its message."""
    assert [(t["role"], t["text"]) for t in turns] == _expected(said), where
    assert [t["id"] for t in turns[::2]] == [turn_id for turn_id, _, _ in said], where
    positions = [t["position"] for t in turns]
    assert positions == sorted(set(positions)), where
    pairs = zip(positions[::2], positions[1::2], strict=True)
    assert all(reply == message + 1 for message, reply in pairs), where


async def test_export_console_and_prompt_window_list_turns_as_said(
    models: Models, db_url: str
) -> None:
    recorder = PromptRecorder()
    model = GenericFakeChatModel(
        messages=(AIMessage(content=f"Glad to help with that, answer {n}.") for n in range(1000)),
        callbacks=[recorder],
    )
    generator = ResponseGenerator(shared_kb(), shared_retriever(), chat_model=model)
    settings = replace(Settings(), host="127.0.0.1", port=0, db_url=db_url, device="cpu")
    async with running(settings, models=models, generator=generator) as srv:
        key = await make_operator(srv, "history-admin", "admin")
        async with (
            connect(srv.url + "/chat") as first_ws,
            connect(srv.url + "/chat") as second_ws,
            operator_client(srv, key) as operator,
        ):
            first, second = Client(first_ws), Client(second_ws)
            welcome = await first.hello(user={"external_id": "history-1"})
            user_id, waited_id = welcome["user_id"], welcome["session_id"]
            waited = await _waiting(first, WAITING)
            at_once_id = (await second.hello(user={"external_id": "history-1"}))["session_id"]
            assert at_once_id != waited_id
            at_once = await _at_once(second, AT_ONCE)
            # Let the last reply's rows commit: they are written after its frame.
            await first.send({"type": "message", "id": "w-last", "text": "Thanks, that is all."})
            await first.recv_until("reply")
            await second.send({"type": "message", "id": "b-last", "text": "Thanks, that is all."})
            await second.recv_until("reply")
            watched = {
                sid: (await operator.ok("session.watch", session_id=sid))["turns"]
                for sid in (waited_id, at_once_id)
            }
            view = (await operator.ok("profile.get", user_id=user_id))["profile"]
            exported = (await operator.ok("profile.export", user_id=user_id))["export"]

    conversations = {waited_id: waited, at_once_id: at_once}
    for conversation_id, said in conversations.items():
        listed = len(said) * 2
        _check_listed(watched[conversation_id][:listed], said, "session.watch")
        in_view = next(c for c in view["conversations"] if c["id"] == conversation_id)
        _check_listed(in_view["turns"][:listed], said, "profile.get")
        of_conversation = [t for t in exported["turns"] if t["conversation_id"] == conversation_id]
        _check_listed(of_conversation[:listed], said, "profile.export")
    # The export goes conversation by conversation, in the order they started.
    grouped = itertools.groupby(t["conversation_id"] for t in exported["turns"])
    assert [conversation_id for conversation_id, _ in grouped] == [waited_id, at_once_id]
    # A reply keeps the time it was said: before the message the client sent after reading it.
    waited_turns = [t for t in exported["turns"] if t["conversation_id"] == waited_id]
    times = [datetime.fromisoformat(t["at"]) for t in waited_turns]
    assert times == sorted(times)

    # Every prompt's window: the turns said before its message, the latest few, in order.
    keep = generator.config.window_turns
    prompts = {str(prompt[-1].text): prompt for prompt in recorder.prompts}
    for said in conversations.values():
        before: list[tuple[str, str]] = []
        for _, text, reply in said:
            assert text in prompts, f"no prompt answered {text!r}"
            window = [(m.type, str(m.text)) for m in prompts[text][1:-1]]
            expected = [("human" if r == "user" else "ai", t) for r, t in before[-keep:]]
            assert window == expected, text
            before += [("user", text), ("assistant", reply)]


# revision 0004 on history stored before positions

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

_users = sa.table(
    "users",
    *(sa.column(c, sa.String) for c in ("id", "tenant", "external_id")),
    sa.column("consent", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("last_seen_at", sa.DateTime(timezone=True)),
)
_conversations = sa.table(
    "conversations",
    *(sa.column(c, sa.String) for c in ("id", "user_id", "channel", "status")),
    sa.column("started_at", sa.DateTime(timezone=True)),
)
_turns = sa.table(
    "turns",
    *(sa.column(c, sa.String) for c in ("id", "conversation_id", "user_id", "role", "client_id")),
    sa.column("text", sa.Text),
    sa.column("intent", sa.String),
    sa.column("latency_ms", sa.Float),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_frames = sa.table(
    "session_frames",
    sa.column("conversation_id", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("body", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_corrections = sa.table(
    "label_corrections",
    *(sa.column(c, sa.String) for c in ("turn_id", "field", "old_value", "new_value")),
    sa.column("created_at", sa.DateTime(timezone=True)),
)

# Per conversation: its turns as stored (id, role, client id, labelled), one second apart in
# this order, and the frames its journal kept.
STORED: dict[str, tuple[list[tuple[str, str, str | None, bool]], list[str]]] = {
    # The journal tells: replies stored late, and a message held by an operator (acked, no
    # reply) followed by the operator's turn.
    "c" * 32: (
        [
            ("j-u1", "user", "m1", True),
            ("j-u2", "user", "m2", True),
            ("j-a1", "assistant", None, False),
            ("j-u3", "user", "m3", True),
            ("j-a2", "assistant", None, False),
            ("j-a3", "assistant", None, False),
            ("j-u4", "user", "m4", True),
            ("j-o1", "operator", None, False),
        ],
        [
            '{"type": "ack", "seq": 1, "id": "m1"}',
            '{"type": "ack", "seq": 2, "id": "m2"}',
            '{"type": "reply", "seq": 3, "turn_id": "j-u1", "text": "text of j-a1"}',
            '{"type": "ack", "seq": 4, "id": "m3"}',
            '{"type": "reply", "seq": 5, "turn_id": "j-u2", "text": "text of j-a2"}',
            '{"type": "reply", "seq": 6, "turn_id": "j-u3", "text": "text of j-a3"}',
            '{"type": "ack", "seq": 7, "id": "m4", "delivered_to": "operator"}',
            '{"type": "operator.message", "seq": 8, "text": "text of j-o1"}',
        ],
    ),
    # No journal (a closed conversation): every labelled message got one reply, in order.
    "d" * 32: (
        [
            ("p-u1", "user", "m1", True),
            ("p-u2", "user", "m2", True),
            ("p-a1", "assistant", None, False),
            ("p-a2", "assistant", None, False),
        ],
        [],
    ),
    # No journal, and a labelled message without a reply: which reply answers which cannot
    # be told, so the stored order stays.
    "e" * 32: (
        [
            ("h-u1", "user", "m1", True),
            ("h-u2", "user", "m2", True),
            ("h-a1", "assistant", None, False),
            ("h-o1", "operator", None, False),
        ],
        [],
    ),
    # Already in order; its last message still waits for its reply.
    "f" * 32: (
        [
            ("o-u1", "user", "m1", True),
            ("o-a1", "assistant", None, False),
            ("o-u2", "user", "m2", False),
        ],
        [],
    ),
    "0" * 32: ([], []),
}
SAID = {
    "c" * 32: ["j-u1", "j-a1", "j-u2", "j-a2", "j-u3", "j-a3", "j-u4", "j-o1"],
    "d" * 32: ["p-u1", "p-a1", "p-u2", "p-a2"],
    "e" * 32: ["h-u1", "h-u2", "h-a1", "h-o1"],
    "f" * 32: ["o-u1", "o-a1", "o-u2"],
    "0" * 32: [],
}


async def _write_unordered_history(url: str) -> str:
    """STORED, written as revision 0003 held it; the user's id."""
    user_id = "a" * 32
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                _users.insert().values(
                    id=user_id,
                    tenant="default",
                    external_id="before-positions",
                    consent=True,
                    created_at=T0,
                    last_seen_at=T0,
                )
            )
            for conversation_id, (turns, frames) in STORED.items():
                await conn.execute(
                    _conversations.insert().values(
                        id=conversation_id,
                        user_id=user_id,
                        channel="chat",
                        status="bot",
                        started_at=T0,
                    )
                )
                for n, (turn_id, role, client_id, labelled) in enumerate(turns):
                    await conn.execute(
                        _turns.insert().values(
                            id=turn_id,
                            conversation_id=conversation_id,
                            user_id=user_id,
                            role=role,
                            client_id=client_id,
                            text=f"text of {turn_id}",
                            intent="card_arrival" if labelled else None,
                            latency_ms=900.0 if role == "assistant" else None,
                            created_at=T0 + timedelta(seconds=n),
                        )
                    )
                for seq, body in enumerate(frames, 1):
                    await conn.execute(
                        _frames.insert().values(
                            conversation_id=conversation_id, seq=seq, body=body, created_at=T0
                        )
                    )
            await conn.execute(
                _corrections.insert().values(
                    turn_id="j-u2",
                    field="intent",
                    old_value="card_arrival",
                    new_value="card_delivery_estimate",
                    created_at=T0,
                )
            )
    finally:
        await engine.dispose()
    return user_id


def _migrate_with_the_cli(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(ASSISTANT_DB_URL=url, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [str(ASSISTANT), "migrate"], env=env, capture_output=True, text=True, timeout=300
    )


async def test_revision_0004_puts_stored_history_in_the_order_it_was_said(
    empty_db_url: str,
) -> None:
    await asyncio.to_thread(upgrade, empty_db_url, "0003")
    user_id = await _write_unordered_history(empty_db_url)

    done = await asyncio.to_thread(_migrate_with_the_cli, empty_db_url)
    assert done.returncode == 0, done.stderr
    assert "turn history: 2 stored conversations put in the order they were said" in done.stdout
    await asyncio.to_thread(check, empty_db_url)
    # Already at the head: nothing runs, nothing is counted.
    assert (await asyncio.to_thread(upgrade, empty_db_url)).history_reordered is None

    store = Store.open(empty_db_url)
    try:
        for conversation_id, said in SAID.items():
            turns = await store.list_turns(conversation_id)
            assert [t.id for t in turns] == said, conversation_id
        journal = await store.list_turns("c" * 32)
        # A user turn's second position is its reply's, taken or not.
        assert [t.position for t in journal] == [0, 1, 2, 3, 4, 5, 6, 8]
        assert [t.position for t in await store.list_turns("e" * 32)] == [0, 2, 4, 5]
        # New turns go on after the stored ones, each reply right after its message.
        turn, created = await store.add_user_turn("c" * 32, user_id, "m5", "and now?")
        assert created and turn.position == 9
        finished = await store.finish_turn(
            turn.id,
            labels=TurnLabels("card_arrival"),
            reply_text="soon",
            latency_ms=1.0,
            profile=None,
        )
        assert finished.reply.position == 10
        waiting, _ = await store.add_user_turn("f" * 32, user_id, "m3", "hello?")
        assert waiting.position == 4
        empty, _ = await store.add_user_turn("0" * 32, user_id, "m1", "first words")
        assert empty.position == 0
        # Nothing else was touched: the label correction of a renumbered turn is still there.
        corrections = await OperatorStore(store).list_label_corrections()
        assert [(c.turn_id, c.new_value) for c in corrections] == [
            ("j-u2", "card_delivery_estimate")
        ]
    finally:
        await store.close()


async def test_positions_are_taken_when_said_and_replies_keep_theirs(store: Store) -> None:
    """The store's side: messages sent without waiting, operator turns between them, replies
    written last; replays take no positions; the dialogue state is written with a reply."""
    user = await store.upsert_user("default", "positions")
    conversation = await store.open_conversation(user.id, "chat")
    first, _ = await store.add_user_turn(conversation.id, user.id, "m1", "one")
    second, _ = await store.add_user_turn(conversation.id, user.id, "m2", "two")
    again, created = await store.add_user_turn(conversation.id, user.id, "m1", "one, resent")
    assert (again, created) == (first, False)
    said = await OperatorStore(store).add_operator_turn(conversation.id, "an operator here")
    third, _ = await store.add_user_turn(conversation.id, user.id, "m3", "three")
    assert [first.position, second.position, said.position, third.position] == [0, 2, 4, 5]
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    for turn, state in ((second, None), (first, {"topic": "card_arrival"}), (third, None)):
        await store.finish_turn(
            turn.id,
            labels=TurnLabels(),
            reply_text=f"reply to {turn.text}",
            latency_ms=1.0,
            profile=None,
            said_at=earlier,
            dialogue_state=state,
        )
    turns = await store.list_turns(conversation.id)
    assert [t.text for t in turns] == [
        "one",
        "reply to one",
        "two",
        "reply to two",
        "an operator here",
        "three",
        "reply to three",
    ]
    assert [t.created_at for t in turns if t.role == "assistant"] == [earlier] * 3
    stored = await store.get_conversation(conversation.id)
    assert stored is not None and stored.dialogue_state == {"topic": "card_arrival"}
    assert (await store.open_conversation(user.id, "chat")).dialogue_state is None
    # User and operator turns of several conversations at once (on SQLite, one transaction):
    # whichever comes first, the user turn's second position stays free for its reply.
    others = [await store.open_conversation(user.id, "voice") for _ in range(4)]
    ops = OperatorStore(store)
    await asyncio.gather(
        *(
            write
            for n, other in enumerate(others)
            for write in (
                store.add_user_turn(other.id, user.id, f"m{n}", "hello"),
                ops.add_operator_turn(other.id, "hi"),
            )
        )
    )
    for other in others:
        placed = {t.role: t.position for t in await store.list_turns(other.id)}
        assert (placed["user"], placed["operator"]) in ((0, 2), (1, 0)), placed
