"""ORM rows to the frozen records the store returns, and vectors to and from their column.

A record's fields are named after its row's columns, so one function makes every converter:
it copies the columns of the record's field names, through an adapter where the column holds
something else (vector bytes, a JSON object the record must not share with the session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from profiles.models import (
    AuditEntry,
    Base,
    BehaviourEvent,
    Conversation,
    LabelCorrection,
    Operator,
    Profile,
    ProfileSnapshot,
    Turn,
    User,
)
from profiles.operator_records import AuditRecord, LabelCorrectionRecord, OperatorRecord
from profiles.records import (
    ConversationRecord,
    EventRecord,
    ProfileRecord,
    SnapshotRecord,
    TurnRecord,
    UserRecord,
    Vector,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "audit_record",
    "conversation_record",
    "correction_record",
    "event_record",
    "from_bytes",
    "operator_record",
    "or_none",
    "profile_record",
    "records",
    "snapshot_record",
    "to_bytes",
    "turn_record",
    "user_record",
]

R = TypeVar("R", bound="DataclassInstance")
T = TypeVar("T")
M = TypeVar("M")


def to_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _copied(value: dict[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def _converter(
    model: type[Base],
    record: type[R],
    *,
    given: tuple[str, ...] = (),
    adapt: dict[str, Callable[[Any], Any]] | None = None,
) -> Callable[..., R]:
    """`record` from a `model` row: each field is the column of its name, through
    `adapt[field]` where there is one. The record's last fields, named in `given`, are no
    columns: the caller passes them as keywords."""
    names = tuple(f.name for f in fields(record))
    read_names = names[: len(names) - len(given)]
    if names[len(read_names) :] != given:
        raise TypeError(f"{record.__name__} does not end with the fields {given}")
    unknown = [name for name in read_names if not hasattr(model, name)]
    unknown += [name for name in adapt or {} if name not in read_names]
    if unknown:
        raise TypeError(f"{model.__name__} has no column for {record.__name__}.{unknown}")
    read = attrgetter(*read_names)
    make: Callable[..., R] = record
    if not adapt:
        return lambda row, **extra: make(*read(row), **extra)
    steps = tuple((read_names.index(name), step) for name, step in adapt.items())

    def convert(row: Any, **extra: Any) -> R:
        values = list(read(row))
        for i, step in steps:
            values[i] = step(values[i])
        return make(*values, **extra)

    return convert


user_record: Callable[[User], UserRecord] = _converter(User, UserRecord)
profile_record: Callable[[Profile], ProfileRecord] = _converter(
    Profile,
    ProfileRecord,
    adapt={
        "vector": from_bytes,
        "intent_histogram": _copied,
        "modality_contributions": _copied,
    },
)
conversation_record: Callable[[Conversation], ConversationRecord] = _converter(
    Conversation, ConversationRecord
)
turn_record: Callable[[Turn], TurnRecord] = _converter(Turn, TurnRecord)
event_record: Callable[[BehaviourEvent], EventRecord] = _converter(
    BehaviourEvent, EventRecord, adapt={"props": _copied}
)
snapshot_record: Callable[[ProfileSnapshot], SnapshotRecord] = _converter(
    ProfileSnapshot,
    SnapshotRecord,
    adapt={"vector": from_bytes, "modality_contributions": _copied},
)
operator_record: Callable[[Operator], OperatorRecord] = _converter(Operator, OperatorRecord)
audit_record: Callable[[AuditEntry], AuditRecord] = _converter(
    AuditEntry, AuditRecord, adapt={"detail": _copied}
)
# The turn's text comes from a join: `correction_record(row, text=text)`.
correction_record: Callable[..., LabelCorrectionRecord] = _converter(
    LabelCorrection, LabelCorrectionRecord, given=("text",)
)


def or_none(record: Callable[[M], T], row: M | None) -> T | None:
    return None if row is None else record(row)


async def records(session: AsyncSession, statement: Select[M], record: Callable[[M], T]) -> list[T]:
    """The rows `statement` selects, as records."""
    return [record(row) for row in await session.scalars(statement)]
