"""Core statements of the turn path, built once and run with parameters.

Every chat turn writes a handful of rows. Building a statement per call (its clauses, then
its cache key) costs more CPU than SQLite takes to run it, and on a small machine that CPU
is taken from the models. These are built at import; a call passes only its values.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update

from profiles.models import Conversation, Profile, ProfileSnapshot, SessionFrame, Turn, User
from profiles.records import StoredFrame, TurnRecord

__all__ = [
    "ADD_POSITIONS",
    "INSERT_FRAMES",
    "INSERT_PROFILE",
    "INSERT_SNAPSHOT",
    "INSERT_TURN",
    "LABEL_TURN",
    "LABEL_TURNS",
    "SELECT_PROFILES",
    "SELECT_PROFILES_FOR_UPDATE",
    "SELECT_TAKEN_POSITIONS",
    "SELECT_TURN_OWNERS",
    "TAKE_POSITIONS",
    "UPDATE_CONVERSATION",
    "UPDATE_PROFILE",
    "UPDATE_USER",
    "frame_row",
    "turn_row",
]

_turns = cast(Table, Turn.__table__)
_profiles = cast(Table, Profile.__table__)
_snapshots = cast(Table, ProfileSnapshot.__table__)
_users = cast(Table, User.__table__)
_frames = cast(Table, SessionFrame.__table__)
_conversations = cast(Table, Conversation.__table__)

# An UPDATE sets the columns named in its parameters; the row is picked by the `b_` one.
INSERT_TURN = insert(_turns)
LABEL_TURNS = update(_turns).where(_turns.c.id == bindparam("b_id"))
# Alone, the label update returns its turn's owner and place; an executemany cannot return
# rows.
LABEL_TURN = LABEL_TURNS.returning(_turns.c.conversation_id, _turns.c.user_id, _turns.c.position)
SELECT_TURN_OWNERS = select(
    _turns.c.id, _turns.c.conversation_id, _turns.c.user_id, _turns.c.position
).where(_turns.c.id.in_(bindparam("b_ids", expanding=True)))
# A turn's positions are taken from its conversation's counter, in the turn's transaction: the
# row stays locked until the commit, so concurrent writers of one conversation take turns.
# Alone, one statement takes them and says which they are (and whose conversation it is);
# a batch adds each conversation's share with an executemany and reads the counters back.
UPDATE_CONVERSATION = update(_conversations).where(_conversations.c.id == bindparam("b_id"))
ADD_POSITIONS = UPDATE_CONVERSATION.values(
    next_position=_conversations.c.next_position + bindparam("b_count")
)
TAKE_POSITIONS = ADD_POSITIONS.returning(_conversations.c.next_position, _conversations.c.user_id)
SELECT_TAKEN_POSITIONS = select(
    _conversations.c.id, _conversations.c.next_position, _conversations.c.user_id
).where(_conversations.c.id.in_(bindparam("b_ids", expanding=True)))
# PostgreSQL reads them FOR UPDATE: the read-modify-write of a profile is safe across
# replicas. In user id order: transactions that lock several profiles lock them in one order.
SELECT_PROFILES = (
    select(*_profiles.c)
    .where(_profiles.c.user_id.in_(bindparam("b_user_ids", expanding=True)))
    .order_by(_profiles.c.user_id)
)
SELECT_PROFILES_FOR_UPDATE = SELECT_PROFILES.with_for_update()
INSERT_PROFILE = insert(_profiles)
UPDATE_PROFILE = update(_profiles).where(_profiles.c.user_id == bindparam("b_user_id"))
INSERT_SNAPSHOT = insert(_snapshots)
UPDATE_USER = update(_users).where(_users.c.id == bindparam("b_id"))
INSERT_FRAMES = insert(_frames)

_TURN_COLUMNS = tuple(f.name for f in fields(TurnRecord))


def turn_row(record: TurnRecord) -> dict[str, Any]:
    """INSERT_TURN's parameters: a turn's columns are its record's fields."""
    return {name: getattr(record, name) for name in _TURN_COLUMNS}


def frame_row(frame: StoredFrame, created_at: Any) -> dict[str, Any]:
    return {
        "conversation_id": frame.conversation_id,
        "seq": frame.seq,
        "body": frame.body,
        "created_at": created_at,
    }
