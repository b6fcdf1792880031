"""Throwaway stores: PostgreSQL databases and Redis key prefixes, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.engine import make_url


@asynccontextmanager
async def temporary_pg_database(admin_url: str, prefix: str = "t_") -> AsyncIterator[str]:
    """Create an empty database next to `admin_url`'s, yield its URL, drop it afterwards."""
    url = make_url(admin_url)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(plain)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def temporary_redis_prefix(url: str, prefix: str = "test-") -> AsyncIterator[str]:
    """A fresh key prefix on the Redis at `url`; every key under it is deleted afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}:"
    try:
        yield name
    finally:
        client = Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{name}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
