"""turn positions and dialogue state

Every turn gets its place in its conversation (`turns.position`, unique per conversation),
taken from the conversation's counter (`conversations.next_position`) when it is said: a
user's turn takes two positions, the second kept for the reply that answers it, so that a
reply written after the next message still lands right after its own; an operator's turn
takes one. `conversations.dialogue_state` holds what the conversation is about so far.

Stored conversations get positions in the order they were said, as far as it can be told:

- the session frame journal (`session_frames`) names, in each `reply` frame, the user turn
  it answers (`turn_id`) and the reply's text, which finds the assistant turn;
- without the journal (it keeps only an open conversation's latest frames), a conversation
  where every labelled user turn got exactly one reply, each stored after its message,
  pairs them in order: the bot answers one message at a time, in the order they came, and
  writes a message's labels in the same transaction as its reply. A conversation with a
  labelled turn that got no reply (an operator held it) keeps the rest in stored order;
- messages, operator turns and the replies that cannot be paired keep the order of their
  stored times, as before.

Each paired reply is placed right after its message. The upgrade logs how many
conversations changed order and leaves the count in the Alembic config's attributes
(`history_reordered`), where `assistant migrate` reads it.

The columns are added with a default of 0 and filled: on SQLite a NOT NULL column without
a default, or a table constraint, would rebuild the table, and with foreign keys on,
dropping the old `turns` table deletes every label correction that points at it. The
unique index does the constraint's work; PostgreSQL drops the defaults afterwards.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00.000000
"""

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# Conversations whose turns are read and renumbered together.
_PAGE = 500
# The order stored turns were read in before positions: time, then user before operator
# before assistant (a reply stored in the same instant as its message came after it).
_ROLE_ORDER = {"user": 0, "operator": 1, "assistant": 2}

_turns = sa.table(
    "turns",
    sa.column("id", sa.String),
    sa.column("conversation_id", sa.String),
    sa.column("role", sa.String),
    sa.column("client_id", sa.String),
    sa.column("text", sa.Text),
    sa.column("intent", sa.String),
    sa.column("emotion", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("position", sa.Integer),
)
_conversations = sa.table(
    "conversations", sa.column("id", sa.String), sa.column("next_position", sa.Integer)
)
_frames = sa.table(
    "session_frames",
    sa.column("conversation_id", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("body", sa.Text),
)


@dataclass(frozen=True, slots=True)
class StoredTurn:
    id: str
    role: str
    client_id: str | None
    text: str
    labelled: bool
    created_at: datetime


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("next_position", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("conversations", sa.Column("dialogue_state", sa.JSON(), nullable=True))
    op.add_column("turns", sa.Column("position", sa.Integer(), nullable=False, server_default="0"))
    reordered = _number_stored_turns()
    op.drop_index("ix_turns_conversation_created", table_name="turns")
    op.create_index(
        "ix_turns_conversation_position", "turns", ["conversation_id", "position"], unique=True
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("conversations", "next_position", server_default=None)
        op.alter_column("turns", "position", server_default=None)
    log.info("turn history: %d stored conversations put in the order they were said", reordered)
    context.config.attributes["history_reordered"] = reordered


def downgrade() -> None:
    op.drop_index("ix_turns_conversation_position", table_name="turns")
    op.create_index(
        "ix_turns_conversation_created", "turns", ["conversation_id", "created_at"], unique=False
    )
    # Plain ALTER TABLE ... DROP COLUMN on both backends (SQLite since 3.35): no table rebuild.
    op.drop_column("turns", "position")
    op.drop_column("conversations", "dialogue_state")
    op.drop_column("conversations", "next_position")


def _number_stored_turns() -> int:
    """Give every stored turn its position, a page of conversations at a time; how many
    conversations are now in another order than their stored times gave."""
    bind = op.get_bind()
    reordered = 0
    after = ""
    while True:
        page = list(
            bind.execute(
                sa.select(_conversations.c.id)
                .where(_conversations.c.id > after)
                .order_by(_conversations.c.id)
                .limit(_PAGE)
            ).scalars()
        )
        if not page:
            return reordered
        after = page[-1]
        turns: dict[str, list[StoredTurn]] = {}
        for row in bind.execute(
            sa.select(
                _turns.c.id,
                _turns.c.conversation_id,
                _turns.c.role,
                _turns.c.client_id,
                _turns.c.text,
                _turns.c.intent,
                _turns.c.emotion,
                _turns.c.created_at,
            ).where(_turns.c.conversation_id.in_(page))
        ):
            turns.setdefault(row.conversation_id, []).append(
                StoredTurn(
                    row.id,
                    row.role,
                    row.client_id,
                    row.text,
                    row.intent is not None or row.emotion is not None,
                    _aware(row.created_at),
                )
            )
        frames: dict[str, list[tuple[int, str]]] = {}
        for row in bind.execute(
            sa.select(_frames.c.conversation_id, _frames.c.seq, _frames.c.body).where(
                _frames.c.conversation_id.in_(page)
            )
        ):
            frames.setdefault(row.conversation_id, []).append((row.seq, row.body))
        positions: list[dict[str, Any]] = []
        counters: list[dict[str, Any]] = []
        for conversation_id in page:
            stored = turns.get(conversation_id, [])
            said = said_order(stored, journal_of(frames.get(conversation_id, [])))
            slots = numbered(said)
            if [i for i in slots if i is not None] != [t.id for t in stored_order(stored)]:
                reordered += 1
            positions += [
                {"b_id": turn_id, "position": p}
                for p, turn_id in enumerate(slots)
                if turn_id is not None
            ]
            if slots:
                counters.append({"b_id": conversation_id, "next_position": len(slots)})
        if positions:
            bind.execute(_turns.update().where(_turns.c.id == sa.bindparam("b_id")), positions)
        if counters:
            bind.execute(
                _conversations.update().where(_conversations.c.id == sa.bindparam("b_id")),
                counters,
            )


def _aware(moment: datetime) -> datetime:
    # SQLite keeps no offset: its times were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def stored_order(turns: Iterable[StoredTurn]) -> list[StoredTurn]:
    """The order turns were read in before they had positions."""
    return sorted(turns, key=lambda t: (t.created_at, _ROLE_ORDER.get(t.role, 3), t.id))


@dataclass(frozen=True, slots=True)
class Journal:
    """What a conversation's stored frames tell: each `reply` frame's user turn id and text,
    in the order they were sent, and the client ids of the acked messages."""

    replies: tuple[tuple[str, str], ...] = ()
    acked: frozenset[str] = frozenset()


def journal_of(frames: Sequence[tuple[int, str]]) -> Journal:
    replies: list[tuple[str, str]] = []
    acked: set[str] = set()
    for _, body in sorted(frames):
        try:
            data = json.loads(body)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("type") == "reply":
            turn_id, text = data.get("turn_id"), data.get("text")
            if isinstance(turn_id, str) and isinstance(text, str):
                replies.append((turn_id, text))
        elif data.get("type") == "ack" and isinstance(data.get("id"), str):
            acked.add(data["id"])
    return Journal(tuple(replies), frozenset(acked))


def paired_replies(turns: Sequence[StoredTurn], journal: Journal) -> dict[str, StoredTurn]:
    """User turn id -> the assistant turn that answers it, where that can be told (see the
    module's docstring). `turns` in stored order."""
    users = {t.id: t for t in turns if t.role == "user"}
    replies = [t for t in turns if t.role == "assistant"]
    paired: dict[str, StoredTurn] = {}
    taken: set[str] = set()
    for user_turn_id, text in journal.replies:
        message = users.get(user_turn_id)
        if message is None or user_turn_id in paired:
            continue
        reply = next(
            (
                r
                for r in replies
                if r.id not in taken and r.text == text and r.created_at >= message.created_at
            ),
            None,
        )
        if reply is not None:
            paired[user_turn_id] = reply
            taken.add(reply.id)
    # The journal keeps the latest frames: a message acked there without a reply frame got
    # none. The messages before it are paired, in order, with the replies left over.
    told = {user_turn_id for user_turn_id, _ in journal.replies}
    messages = [
        t
        for t in users.values()
        if t.labelled
        and t.id not in paired
        and t.id not in told
        and (t.client_id is None or t.client_id not in journal.acked)
    ]
    rest = [r for r in replies if r.id not in taken]
    if len(messages) == len(rest) and all(
        reply.created_at >= message.created_at
        for message, reply in zip(messages, rest, strict=True)
    ):
        paired.update((m.id, r) for m, r in zip(messages, rest, strict=True))
    return paired


def said_order(
    turns: Sequence[StoredTurn], journal: Journal
) -> list[tuple[StoredTurn, StoredTurn | None]]:
    """The conversation as it was said: its turns in stored order, each user turn with the
    reply paired with it (placed right after it), every other reply where it was stored."""
    ordered = stored_order(turns)
    paired = paired_replies(ordered, journal)
    placed = {reply.id for reply in paired.values()}
    return [(turn, paired.get(turn.id)) for turn in ordered if turn.id not in placed]


def numbered(said: Sequence[tuple[StoredTurn, StoredTurn | None]]) -> list[str | None]:
    """Turn ids by position (None: a position kept for a reply that never came) as the store
    gives them: a user turn takes two, the second for its reply; any other turn one."""
    slots: list[str | None] = []
    for turn, reply in said:
        slots.append(turn.id)
        if turn.role == "user":
            slots.append(reply.id if reply is not None else None)
    return slots
