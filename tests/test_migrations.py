"""Alembic migrations on both backends: upgrade, check, the real CLI, downgrade and back.

The schema must hold every table the DESIGN "Data model" names, and the unique constraints
that make the store's writes idempotent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from profiles.engine import create_engine
from profiles.migrate import alembic_config, check, upgrade
from profiles.models import Base

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = Path(sys.executable).parent / "alembic"

DESIGN_TABLES = {
    "users",
    "profiles",
    "profile_snapshots",
    "conversations",
    "turns",
    "behaviour_events",
    "operators",
    "audit_log",
    "label_corrections",
}

IDEMPOTENCY_KEYS = {
    "users": ("uq_users_tenant_external", ["tenant", "external_id"]),
    "turns": ("uq_turns_conversation_client", ["conversation_id", "client_id"]),
    "behaviour_events": ("uq_behaviour_events_user_client", ["user_id", "client_id"]),
}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            def names(sync: Connection) -> list[str]:
                return inspect(sync).get_table_names()

            return set(await conn.run_sync(names))
    finally:
        await engine.dispose()


async def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            def current(sync: Connection) -> str | None:
                return MigrationContext.configure(sync).get_current_revision()

            return await conn.run_sync(current)
    finally:
        await engine.dispose()


async def _unique_constraints(url: str, table: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            def uniques(sync: Connection) -> dict[str, list[str]]:
                return {
                    str(uc["name"]): list(uc["column_names"])
                    for uc in inspect(sync).get_unique_constraints(table)
                }

            return await conn.run_sync(uniques)
    finally:
        await engine.dispose()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ALEMBIC), "-x", f"db_url={url}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_single_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    bases = script.get_bases()
    assert len(bases) == 1


def test_models_cover_design_tables() -> None:
    assert set(Base.metadata.tables) >= DESIGN_TABLES


async def test_upgrade_then_check(empty_db_url: str) -> None:
    assert await _revision(empty_db_url) is None
    await asyncio.to_thread(upgrade, empty_db_url)
    await asyncio.to_thread(check, empty_db_url)

    tables = await _tables(empty_db_url)
    assert tables >= DESIGN_TABLES, DESIGN_TABLES - tables
    assert "alembic_version" in tables
    assert await _revision(empty_db_url) == _head()


async def test_upgrade_is_idempotent(empty_db_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_db_url)
    await asyncio.to_thread(upgrade, empty_db_url)
    await asyncio.to_thread(check, empty_db_url)
    assert await _revision(empty_db_url) == _head()


async def test_check_fails_before_upgrade(empty_db_url: str) -> None:
    # An empty database is behind the models: `alembic check` must not pass it.
    with pytest.raises(CommandError):
        await asyncio.to_thread(check, empty_db_url)


async def test_idempotency_constraints_exist(empty_db_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_db_url)
    for table, (name, columns) in IDEMPOTENCY_KEYS.items():
        uniques = await _unique_constraints(empty_db_url, table)
        assert uniques.get(name) == columns, (table, uniques)


async def test_cli_upgrade_and_check(empty_db_url: str) -> None:
    assert ALEMBIC.exists(), ALEMBIC
    up = await asyncio.to_thread(_cli, empty_db_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    chk = await asyncio.to_thread(_cli, empty_db_url, "check")
    assert chk.returncode == 0, chk.stderr
    assert await _revision(empty_db_url) == _head()
    assert await _tables(empty_db_url) >= DESIGN_TABLES


async def test_downgrade_base_then_upgrade(empty_db_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_db_url)
    await asyncio.to_thread(command.downgrade, alembic_config(empty_db_url), "base")

    assert await _revision(empty_db_url) is None
    left = await _tables(empty_db_url)
    assert not (left & DESIGN_TABLES), left
    assert left <= {"alembic_version"}

    await asyncio.to_thread(upgrade, empty_db_url)
    await asyncio.to_thread(check, empty_db_url)
    assert await _tables(empty_db_url) >= DESIGN_TABLES
    assert await _revision(empty_db_url) == _head()
