"""Operator accounts and the audit log of what operators did."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from profiles.errors import Conflict
from profiles.models import AuditEntry, Operator, utcnow
from profiles.operator_records import AuditRecord, OperatorRecord, OperatorRole
from profiles.rows import audit_record, operator_record
from profiles.transactions import Transactions

__all__ = ["OperatorAccounts", "audit_entry"]


def audit_entry(
    operator_id: str | None,
    action: str,
    subject_user_id: str | None,
    detail: dict[str, Any] | None,
) -> AuditEntry:
    return AuditEntry(
        at=utcnow(),
        operator_id=operator_id,
        action=action,
        subject_user_id=subject_user_id,
        detail=dict(detail or {}),
    )


class OperatorAccounts:
    """Operators and the audit log; part of `OperatorStore`."""

    _transactions: Transactions

    async def create_operator(
        self, operator_id: str, name: str, role: OperatorRole, key_hash: str
    ) -> OperatorRecord:
        """A new operator; the id is chosen by the caller because it is part of the key."""
        try:
            async with self._transactions.tx() as session:
                row = Operator(
                    id=operator_id, name=name, role=role, key_hash=key_hash, created_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return operator_record(row)
        except IntegrityError:
            raise Conflict(f"an operator named {name!r} exists already") from None

    async def get_operator(self, operator_id: str) -> OperatorRecord | None:
        return await self._transactions.get(Operator, operator_id, operator_record)

    async def list_operators(self) -> list[OperatorRecord]:
        return await self._transactions.records(
            select(Operator).order_by(Operator.name), operator_record
        )

    async def revoke_operator(self, name: str) -> OperatorRecord | None:
        """Revoke by name; None when there is no such operator. Revoking twice keeps the date."""
        async with self._transactions.tx() as session:
            row = await session.scalar(select(Operator).where(Operator.name == name))
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return operator_record(row)

    async def audit(
        self,
        operator_id: str | None,
        action: str,
        subject_user_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append to the audit log. `detail` must hold no content (no text, names or ids)."""
        async with self._transactions.tx() as session:
            session.add(audit_entry(operator_id, action, subject_user_id, detail))

    async def list_audit(
        self,
        *,
        subject_user_id: str | None = None,
        operator_id: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        stmt = select(AuditEntry).order_by(AuditEntry.id).limit(limit)
        if subject_user_id is not None:
            stmt = stmt.where(AuditEntry.subject_user_id == subject_user_id)
        if operator_id is not None:
            stmt = stmt.where(AuditEntry.operator_id == operator_id)
        return await self._transactions.records(stmt, audit_record)
