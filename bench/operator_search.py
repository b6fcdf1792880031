"""Operator search over 100,000 generated users: p50 and p99 per query, and neighbours.

It fills a fresh, migrated SQLite database (or the empty database `--db-url` names) with
`--users` generated users (seeded): a name and an external id each, a last-seen time over
the past 90 days, and a profile with a 128-d vector, a current emotion (7 labels) and a
recent intent (40 labels). Then it runs each search `--runs` times through the store the
server uses (`OperatorStore.search_users`, 20 results a page) and reports p50 and p99 in
milliseconds, with the plan SQLite chose for each query (index use) when on SQLite.

Queries: a name prefix, an external-id prefix, an exact user id, one emotion, one intent,
emotion + intent, a last-seen window, the third page of an unfiltered listing (cursor
pagination), and the neighbours of one profile (a brute-force cosine scan of all vectors,
read in batches of 8,192 and scored off the event loop).

    .venv/bin/python bench/operator_search.py                       # 100,000 users, SQLite
    .venv/bin/python bench/operator_search.py --users 20000 --runs 50
    .venv/bin/python bench/operator_search.py --db-url postgresql+asyncpg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import percentile

from profiles import OperatorStore, Store, UserQuery, migrate
from profiles.models import Profile, User

EMOTIONS = ["neutral", "happy", "frustrated", "angry", "sad", "anxious", "confused"]
INTENTS = [f"intent_{n:02d}" for n in range(40)]
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]


async def _fill(store: Store, users: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    ids: list[str] = []
    chunk = 5000
    engine = store.transactions.engine
    for start in range(0, users, chunk):
        rows_u: list[dict[str, Any]] = []
        rows_p: list[dict[str, Any]] = []
        for n in range(start, min(users, start + chunk)):
            user_id = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | n).hex
            ids.append(user_id)
            name = f"{FIRST[n % len(FIRST)]} {LAST[(n // 10) % len(LAST)]} {n}"
            seen = now - timedelta(seconds=float(rng.uniform(0, 90 * 86400)))
            rows_u.append(
                {
                    "id": user_id,
                    "tenant": "default",
                    "external_id": f"cust-{n:07d}",
                    "name": name,
                    "name_key": name.casefold(),
                    "locale": "en-GB",
                    "consent": True,
                    "created_at": seen - timedelta(days=30),
                    "last_seen_at": seen,
                    "current_emotion": EMOTIONS[int(rng.integers(0, len(EMOTIONS)))],
                    "recent_intent": INTENTS[int(rng.integers(0, len(INTENTS)))],
                }
            )
            vector = rng.standard_normal(128).astype("<f4")
            rows_p.append(
                {
                    "user_id": user_id,
                    "vector": vector.tobytes(),
                    "dim": 128,
                    "model_version": "bench",
                    "turn_count": int(rng.integers(1, 50)),
                    "event_count": int(rng.integers(0, 200)),
                    "emotion_state": None,
                    "intent_histogram": {},
                    "modality_contributions": {"text": 0.6, "speech": 0.1, "behaviour": 0.3},
                    "updated_at": seen,
                }
            )
        async with engine.begin() as conn:
            await conn.execute(insert(User), rows_u)
            await conn.execute(insert(Profile), rows_p)
    if store.backend == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    else:
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    return ids


async def _time(runs: int, call: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    await call()  # warm-up
    samples = []
    found = 0
    for _ in range(runs):
        started = time.perf_counter()
        found = await call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples), percentile(samples, 99), found


async def _plan(store: Store, ops: OperatorStore, query: UserQuery) -> str:
    """The plan SQLite chooses for a search: which indexes serve it."""
    if store.backend != "sqlite":
        return ""
    from sqlalchemy.dialects import sqlite

    sql = str(
        ops.search_statement(query).compile(
            dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    async with store.transactions.engine.connect() as conn:
        rows = (await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))).all()
    return "; ".join(str(r[-1]) for r in rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await asyncio.to_thread(migrate, url)
        store = Store.open(url)
        ops = OperatorStore(store)
        try:
            started = time.perf_counter()
            ids = await _fill(store, args.users, args.seed)
            fill_s = time.perf_counter() - started
            sample = ids[len(ids) // 2]
            now = datetime.now(UTC)

            async def search(query: UserQuery) -> int:
                return len((await ops.search_users(query)).items)

            async def third_page() -> int:
                page = await ops.search_users(UserQuery(limit=20))
                page = await ops.search_users(UserQuery(limit=20, after=page.next))
                page = await ops.search_users(UserQuery(limit=20, after=page.next))
                return len(page.items)

            async def neighbours() -> int:
                return len(await ops.neighbours(sample, k=5))

            plans = {
                "name prefix": UserQuery(q="grace hopper 4"),
                "emotion": UserQuery(emotion="angry"),
                "emotion + intent": UserQuery(emotion="sad", intent="intent_31"),
                "last seen window": UserQuery(
                    seen_after=now - timedelta(days=11), seen_before=now - timedelta(days=10)
                ),
            }
            for label, query in plans.items():
                plan = await _plan(store, ops, query)
                if plan:
                    print(f"plan, {label}: {plan}")
            queries: list[tuple[str, Callable[[], Awaitable[int]], int]] = [
                ("name prefix 'grace hopper 4'", lambda: search(UserQuery(q="grace hopper 4")), 0),
                ("external id prefix 'cust-00123'", lambda: search(UserQuery(q="cust-00123")), 0),
                ("exact user id", lambda: search(UserQuery(q=sample)), 0),
                ("emotion = angry", lambda: search(UserQuery(emotion="angry")), 0),
                ("intent = intent_07", lambda: search(UserQuery(intent="intent_07")), 0),
                (
                    "emotion + intent",
                    lambda: search(UserQuery(emotion="sad", intent="intent_31")),
                    0,
                ),
                (
                    "last seen 10-11 days ago",
                    lambda: search(
                        UserQuery(
                            seen_after=now - timedelta(days=11),
                            seen_before=now - timedelta(days=10),
                        )
                    ),
                    0,
                ),
                ("3rd page, no filter (cursor)", third_page, 0),
                ("neighbours (cosine, brute force)", neighbours, max(3, args.runs // 10)),
            ]
            results = []
            for name, call, runs in queries:
                p50, p99, found = await _time(runs or args.runs, call)
                results.append(
                    {
                        "query": name,
                        "p50_ms": round(p50, 2),
                        "p99_ms": round(p99, 2),
                        "results": found,
                        "runs": runs or args.runs,
                    }
                )
                print(
                    f"{name:<36} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   ({found} results)",
                    flush=True,
                )
            return {
                "users": args.users,
                "backend": store.backend,
                "fill_s": round(fill_s, 1),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "cpus": os.cpu_count(),
                "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "python": platform.python_version(),
                "results": results,
            }
        finally:
            await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db-url", help="an empty database to fill (default: temporary SQLite)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(
        f"{report['users']:,} users on {report['backend']}, filled in {report['fill_s']} s; "
        f"{report['cpus']} CPUs, load {report['load']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
