"""The turn path's writes, shared by the turns of one transaction.

With many sessions, the store's thread takes a batch of turns per transaction (group commit,
`Transactions.run`). Executing a statement costs SQLAlchemy more CPU than SQLite takes to run
it, so the turns of a batch share each statement: one executemany per statement, not one
execute per turn. Every write here is also a plain callable of a session, which runs it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from profiles.errors import NotFound
from profiles.models import Profile, Turn, new_id, utcnow
from profiles.records import (
    FinishedTurn,
    ProfileRecord,
    ProfileUpdate,
    Role,
    TurnLabels,
    TurnRecord,
)
from profiles.rows import profile_record, to_bytes
from profiles.transactions import Grouped
from profiles.turn_statements import (
    ADD_POSITIONS,
    INSERT_PROFILE,
    INSERT_SNAPSHOT,
    INSERT_TURN,
    LABEL_TURN,
    LABEL_TURNS,
    SELECT_PROFILES,
    SELECT_PROFILES_FOR_UPDATE,
    SELECT_TAKEN_POSITIONS,
    SELECT_TURN_OWNERS,
    TAKE_POSITIONS,
    UPDATE_CONVERSATION,
    UPDATE_PROFILE,
    UPDATE_USER,
    turn_row,
)

__all__ = [
    "FinishTurn",
    "InsertTurn",
    "ProfileChange",
    "ProfileWrite",
    "counted",
    "label_turn",
    "new_turn",
    "note_user_labels",
    "write_profiles",
]

# A profile change is either the new state, or a function of the stored profile that computes
# it inside the writing transaction (one round trip instead of a read, then a write).
ProfileChange = ProfileUpdate | Callable[[ProfileRecord | None], ProfileUpdate]


def new_turn(
    conversation_id: str,
    user_id: str,
    role: Role,
    text: str,
    *,
    created_at: datetime,
    position: int,
    client_id: str | None = None,
    latency_ms: float | None = None,
) -> TurnRecord:
    """A turn not yet stored, with a new id and no labels."""
    return TurnRecord(
        id=new_id(),
        conversation_id=conversation_id,
        user_id=user_id,
        role=role,
        client_id=client_id,
        text=text,
        intent=None,
        intent_confidence=None,
        emotion=None,
        emotion_scores=None,
        latency_ms=latency_ms,
        created_at=created_at,
        position=position,
    )


def counted(histogram: dict[str, Any], intent: str | None) -> dict[str, Any]:
    """The profile's intent counts (shown to operators) with one more `intent`."""
    out = dict(histogram)
    if intent is not None:
        out[intent] = int(out.get(intent, 0)) + 1
    return out


def note_user_labels(session: Session, labelled: Sequence[tuple[str, TurnLabels]]) -> None:
    """Keep each user's current emotion and recent intent (for search); a user labelled twice
    keeps the later labels."""
    per_user: dict[str, dict[str, str]] = {}
    for user_id, labels in labelled:
        values = per_user.setdefault(user_id, {})
        if labels.emotion is not None:
            values["current_emotion"] = labels.emotion
        if labels.intent is not None:
            values["recent_intent"] = labels.intent
    # An executemany sets the same columns in every row.
    by_columns: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for user_id, values in per_user.items():
        if values:
            by_columns.setdefault(tuple(sorted(values)), []).append({"b_id": user_id, **values})
    for rows in by_columns.values():
        session.execute(UPDATE_USER, rows)


def label_turn(session: Session, turn_id: str, labels: TurnLabels) -> None:
    """The models' labels on a user turn that gets no reply, with the user columns and intent
    counts that follow them; the profile vector stays."""
    turn = session.get(Turn, turn_id)
    if turn is None:
        raise NotFound(turn_id)
    turn.intent = labels.intent
    turn.intent_confidence = labels.intent_confidence
    turn.emotion = labels.emotion
    turn.emotion_scores = labels.emotion_scores
    note_user_labels(session, [(turn.user_id, labels)])
    if labels.intent is not None:
        row = session.get(Profile, turn.user_id)
        if row is not None:
            row.intent_histogram = counted(row.intent_histogram or {}, labels.intent)


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    """A change to a user's profile (None: count `intent` only), made by `turn_id` if a turn."""

    user_id: str
    change: ProfileChange | None
    turn_id: str | None
    intent: str | None


def write_profiles(
    session: Session, writes: Sequence[ProfileWrite], *, lock: bool
) -> list[ProfileRecord | None]:
    """Apply each write in order, each with a snapshot of its result, and return the profiles
    as saved (None for a write that counts an intent of a user without a profile). `lock`:
    read the profiles FOR UPDATE, so that replicas take turns on them (PostgreSQL).

    Core statements: this runs for every turn, and the ORM's unit of work costs more than the
    statements themselves. A user written twice gets one row write, of the final state.
    """
    users = sorted({w.user_id for w in writes if w.change is not None or w.intent is not None})
    if not users:
        return [None] * len(writes)
    query = SELECT_PROFILES_FOR_UPDATE if lock else SELECT_PROFILES
    stored = {
        row.user_id: profile_record(row)  # type: ignore[arg-type]
        for row in session.execute(query, {"b_user_ids": users})
    }
    current: dict[str, ProfileRecord] = dict(stored)
    # Each profile's vector as its column holds it, converted once for row and snapshot.
    blobs: dict[str, bytes] = {}
    snapshots: list[dict[str, Any]] = []
    saved_profiles: list[ProfileRecord | None] = []
    for write in writes:
        saved, update = _after(write, current.get(write.user_id))
        if saved is None:
            saved_profiles.append(None)
            continue
        if update is not None:
            blobs[write.user_id] = to_bytes(saved.vector)
            snapshots.append(
                {
                    "user_id": write.user_id,
                    "vector": blobs[write.user_id],
                    "model_version": saved.model_version,
                    "reason": update.reason,
                    "turn_id": write.turn_id,
                    "modality_contributions": saved.modality_contributions,
                    "created_at": saved.updated_at,
                }
            )
        current[write.user_id] = saved
        saved_profiles.append(saved)
    inserts = [
        {"user_id": user, "emotion_state": None, **_columns(p, blobs.get(user))}
        for user, p in current.items()
        if user not in stored
    ]
    updates = [
        {"b_user_id": user, **_columns(p, blobs.get(user))}
        for user, p in current.items()
        if user in stored and p is not stored[user]
    ]
    if inserts:
        session.execute(INSERT_PROFILE, inserts)
    if updates:
        session.execute(UPDATE_PROFILE, updates)
    if snapshots:
        session.execute(INSERT_SNAPSHOT, snapshots)
    return saved_profiles


def _after(
    write: ProfileWrite, before: ProfileRecord | None
) -> tuple[ProfileRecord | None, ProfileUpdate | None]:
    """The profile after `write` over `before`, and the update that made it (None when the
    write only counted an intent)."""
    if write.change is None:
        if before is None:
            return None, None
        return replace(
            before, intent_histogram=counted(before.intent_histogram, write.intent)
        ), None
    update = write.change if isinstance(write.change, ProfileUpdate) else write.change(before)
    saved = ProfileRecord(
        user_id=write.user_id,
        vector=np.asarray(update.vector, dtype=np.float32),
        model_version=update.model_version,
        turn_count=(before.turn_count if before else 0) + update.turns,
        event_count=(before.event_count if before else 0) + update.events,
        emotion_state=before.emotion_state if before else None,
        intent_histogram=counted(before.intent_histogram if before else {}, write.intent),
        modality_contributions=dict(update.modality_contributions),
        updated_at=utcnow(),
    )
    return saved, update


def _columns(profile: ProfileRecord, blob: bytes | None) -> dict[str, Any]:
    """The profile row's columns that a write sets; `blob`: its vector's bytes, if at hand."""
    return {
        "vector": to_bytes(profile.vector) if blob is None else blob,
        "dim": int(profile.vector.shape[0]),
        "model_version": profile.model_version,
        "turn_count": profile.turn_count,
        "event_count": profile.event_count,
        "intent_histogram": profile.intent_histogram,
        "modality_contributions": profile.modality_contributions,
        "updated_at": profile.updated_at,
    }


@dataclass(frozen=True, slots=True)
class InsertTurn(Grouped):
    """A turn said now, stored with its place in the conversation (the stored record is the
    result). A user's turn takes two positions, the second kept for the reply that answers it;
    an operator's takes one. A client id already stored in the conversation fails the group;
    an unknown conversation is NotFound."""

    conversation_id: str
    user_id: str | None  # None: the conversation's user
    role: Role
    text: str
    created_at: datetime
    client_id: str | None = None

    @property
    def width(self) -> int:
        return 2 if self.role == "user" else 1

    @classmethod
    def run_group(cls, session: Session, items: Sequence[InsertTurn]) -> list[Any]:
        # Each item's first position and the conversation's user.
        firsts: list[tuple[int, str]] = []
        if len(items) == 1:
            item = items[0]
            taken = session.execute(
                TAKE_POSITIONS, {"b_id": item.conversation_id, "b_count": item.width}
            ).one_or_none()
            if taken is None:
                raise NotFound(f"conversation {item.conversation_id}")
            firsts.append((taken[0] - item.width, taken[1]))
        else:
            shares: dict[str, int] = {}
            for item in items:
                shares[item.conversation_id] = shares.get(item.conversation_id, 0) + item.width
            session.execute(ADD_POSITIONS, [{"b_id": c, "b_count": n} for c, n in shares.items()])
            free = {
                row.id: (row.next_position - shares[row.id], row.user_id)
                for row in session.execute(SELECT_TAKEN_POSITIONS, {"b_ids": list(shares)})
            }
            for item in items:
                if item.conversation_id not in free:
                    raise NotFound(f"conversation {item.conversation_id}")
                first, owner = free[item.conversation_id]
                firsts.append((first, owner))
                free[item.conversation_id] = (first + item.width, owner)
        records = [
            new_turn(
                item.conversation_id,
                item.user_id or owner,
                item.role,
                item.text,
                created_at=item.created_at,
                position=first,
                client_id=item.client_id,
            )
            for item, (first, owner) in zip(items, firsts, strict=True)
        ]
        session.execute(INSERT_TURN, [turn_row(record) for record in records])
        return records


@dataclass(frozen=True, slots=True)
class FinishTurn(Grouped):
    """A user turn's labels, the assistant's reply turn and the user's profile, and the
    conversation's dialogue state when the turn changed it. The reply takes the position its
    message kept for it, with the time it was said (`said_at`; None: now)."""

    user_turn_id: str
    labels: TurnLabels
    reply_text: str
    latency_ms: float
    profile: ProfileChange | None
    lock_profiles: bool
    said_at: datetime | None = None
    dialogue_state: dict[str, Any] | None = None

    def _label_row(self) -> dict[str, Any]:
        return {
            "b_id": self.user_turn_id,
            "intent": self.labels.intent,
            "intent_confidence": self.labels.intent_confidence,
            "emotion": self.labels.emotion,
            "emotion_scores": self.labels.emotion_scores,
        }

    @classmethod
    def run_group(cls, session: Session, items: Sequence[FinishTurn]) -> list[Any]:
        if len(items) == 1:
            # Alone (always, on PostgreSQL): the update returns the owner, one statement less.
            owner = session.execute(LABEL_TURN, items[0]._label_row()).one_or_none()
            owners = {} if owner is None else {items[0].user_turn_id: tuple(owner)}
        else:
            owners = {
                row.id: (row.conversation_id, row.user_id, row.position)
                for row in session.execute(
                    SELECT_TURN_OWNERS, {"b_ids": [item.user_turn_id for item in items]}
                )
            }
        for item in items:
            if item.user_turn_id not in owners:
                raise NotFound(item.user_turn_id)
        if len(items) > 1:
            session.execute(LABEL_TURNS, [item._label_row() for item in items])
        now = utcnow()
        replies = [
            new_turn(
                owners[item.user_turn_id][0],
                owners[item.user_turn_id][1],
                "assistant",
                item.reply_text,
                created_at=item.said_at or now,
                position=owners[item.user_turn_id][2] + 1,
                latency_ms=item.latency_ms,
            )
            for item in items
        ]
        session.execute(INSERT_TURN, [turn_row(reply) for reply in replies])
        states = [
            {"b_id": reply.conversation_id, "dialogue_state": item.dialogue_state}
            for item, reply in zip(items, replies, strict=True)
            if item.dialogue_state is not None
        ]
        if states:
            session.execute(UPDATE_CONVERSATION, states)
        profiles = write_profiles(
            session,
            [
                ProfileWrite(reply.user_id, item.profile, item.user_turn_id, item.labels.intent)
                for item, reply in zip(items, replies, strict=True)
            ],
            lock=items[0].lock_profiles,
        )
        note_user_labels(
            session,
            [(reply.user_id, item.labels) for item, reply in zip(items, replies, strict=True)],
        )
        return [
            FinishedTurn(reply, profile) for reply, profile in zip(replies, profiles, strict=True)
        ]
