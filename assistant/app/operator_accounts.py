"""`assistant operators create|list|revoke`: managing operator keys from the command line."""

from __future__ import annotations

import asyncio
import uuid

from assistant.app.settings import Settings
from assistant.operators.keys import new_key
from profiles import Conflict, OperatorRecord, OperatorRole, OperatorStore, Store


async def create_operator(
    settings: Settings, name: str, role: OperatorRole
) -> tuple[OperatorRecord, str]:
    """A new operator and its key. The key is returned once and only its hash is stored.

    Raises ValueError when the name is taken.
    """
    store = Store.open(settings.db_url)
    try:
        operator_id = uuid.uuid4().hex
        key, key_hash = await asyncio.to_thread(new_key, operator_id)
        try:
            operator = await OperatorStore(store).create_operator(operator_id, name, role, key_hash)
        except Conflict as exc:
            raise ValueError(str(exc)) from None
        return operator, key
    finally:
        await store.close()


async def list_operators(settings: Settings) -> list[OperatorRecord]:
    store = Store.open(settings.db_url)
    try:
        return await OperatorStore(store).list_operators()
    finally:
        await store.close()


async def revoke_operator(settings: Settings, name: str) -> OperatorRecord | None:
    store = Store.open(settings.db_url)
    try:
        return await OperatorStore(store).revoke_operator(name)
    finally:
        await store.close()
