"""Where the store's transactions run: the async driver's pool, or group commit on SQLite.

Work is written once, as synchronous code of a session. On PostgreSQL (and in-memory SQLite)
the async driver runs each on the connection pool, one transaction each. On a SQLite file it
runs on a thread of its own, and what arrives while a transaction runs shares the next one
(group commit): with many sessions, one commit and one hand-over serve a whole batch of turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

from sqlalchemy import Engine, Select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from profiles.errors import StoreUnavailable
from profiles.models import Base
from profiles.rows import or_none, records

__all__ = ["Grouped", "Transactions", "run_together"]

T = TypeVar("T")
M = TypeVar("M", bound=Base)

# Errors of an unreachable or overloaded database (pool wait included), as opposed to the
# integrity errors that callers translate themselves.
_UNAVAILABLE = (OperationalError, DBAPIError, PoolTimeout, OSError, ConnectionError)

# A queued transaction's result, or the exception its caller gets.
_Outcome = tuple[Any, BaseException | None]


class Grouped(ABC):
    """Work that runs together with the other work of its kind in a transaction."""

    @classmethod
    @abstractmethod
    def run_group(cls, session: Session, items: Sequence[Self]) -> list[Any]:
        """Each item's result, in order. Raises when any item fails: the caller then runs
        each alone to learn which."""

    def __call__(self, session: Session) -> Any:
        return self.run_group(session, [self])[0]


def run_together(session: Session, works: Sequence[Callable[[Session], Any]]) -> list[Any]:
    """Each work's result, in order. The `Grouped` works of a kind run as one group where the
    first of them stands: they arrived together, so any order among them is one they could
    have run in."""
    groups: dict[type[Grouped], list[Grouped]] = {}
    positions: dict[type[Grouped], list[int]] = {}
    for i, work in enumerate(works):
        if isinstance(work, Grouped):
            groups.setdefault(type(work), []).append(work)
            positions.setdefault(type(work), []).append(i)
    results: list[Any] = [None] * len(works)
    for i, work in enumerate(works):
        if not isinstance(work, Grouped):
            results[i] = work(session)
            continue
        members = groups.pop(type(work), None)
        if members is None:
            continue  # ran with the first of its kind
        values = type(work).run_group(session, members)
        for j, value in zip(positions[type(work)], values, strict=True):
            results[j] = value
    return results


def _failed(exc: BaseException) -> _Outcome:
    if isinstance(exc, _UNAVAILABLE) and not isinstance(exc, IntegrityError):
        unavailable = StoreUnavailable(type(exc).__name__)
        unavailable.__cause__ = exc
        return None, unavailable
    return None, exc


class Transactions:
    """The store's transactions on one database; driver and connection failures surface as
    `StoreUnavailable`, integrity errors as themselves."""

    def __init__(self, engine: AsyncEngine, thread_engine: Engine | None = None) -> None:
        self.engine = engine
        self.backend = engine.dialect.name
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._thread_sessions = (
            None if thread_engine is None else sessionmaker(thread_engine, expire_on_commit=False)
        )
        self._thread_engine = thread_engine
        self._thread = (
            None
            if thread_engine is None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        )
        # SQLite has one writer at a time and makes the others poll with growing sleeps; in
        # one process an asyncio lock hands the database over the moment a commit is done.
        self._writer: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.backend == "sqlite" else contextlib.nullcontext()
        )
        # What `run` is given while a transaction is running goes into the next one, together.
        self._queued: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        # CPU seconds of the store's thread in transactions, for the metrics: on a small
        # machine it is taken from the models.
        self.thread_cpu_s = 0.0

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.shield(self._committer)
        if self._thread is not None and self._thread_engine is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._thread, self._thread_engine.dispose
            )
            self._thread.shutdown(wait=True)
        await self.engine.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction through the async driver."""
        try:
            async with self._writer, self._sessions() as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def get(self, model: type[M], key: str, record: Callable[[M], T]) -> T | None:
        """The `model` row with primary key `key`, as its record."""
        async with self.tx() as session:
            return or_none(record, await session.get(model, key))

    async def records(self, statement: Select[M], record: Callable[[M], T]) -> list[T]:
        """The rows `statement` selects, as records."""
        async with self.tx() as session:
            return await records(session, statement, record)

    async def run(self, work: Callable[[Session], T]) -> T:
        """`work` in a transaction: on a SQLite file, on the store's thread (one hand-over per
        transaction instead of one per statement, begin and commit through aiosqlite, which on
        a small machine costs more CPU than the statements), together with what arrived
        while the previous transaction ran. Elsewhere the async driver runs it alone."""
        if self._thread is None:
            try:
                async with self._sessions() as session, session.begin():
                    return await session.run_sync(work)
            except IntegrityError:
                raise
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(type(exc).__name__) from exc
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued(), name="sqlite-commits")
        return await future

    async def _commit_queued(self) -> None:
        """Run what is queued, a batch per transaction, until nothing is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    async with self._writer:
                        outcomes = await loop.run_in_executor(
                            self._thread, self._in_thread, [work for work, _ in batch]
                        )
                except asyncio.CancelledError:
                    for _, future in (*batch, *self._queued):
                        future.cancel()
                    self._queued = []
                    raise
                except Exception as exc:
                    outcomes = [_failed(exc)] * len(batch)
                for (_, future), (value, error) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller was cancelled; the work ran regardless
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(value)
        finally:
            self._committer = None

    def _in_thread(self, works: list[Callable[[Session], Any]]) -> list[_Outcome]:
        started = time.thread_time()
        try:
            return self._together(works)
        finally:
            self.thread_cpu_s += time.thread_time() - started

    def _together(self, works: list[Callable[[Session], Any]]) -> list[_Outcome]:
        if len(works) > 1:
            try:
                assert self._thread_sessions is not None
                with self._thread_sessions() as session, session.begin():
                    return [(value, None) for value in run_together(session, works)]
            except Exception:  # one failed: each alone, so that the others commit
                pass
        return [self._alone(work) for work in works]

    def _alone(self, work: Callable[[Session], Any]) -> _Outcome:
        assert self._thread_sessions is not None
        try:
            with self._thread_sessions() as session, session.begin():
                return work(session), None
        except Exception as exc:  # raised to its caller
            return _failed(exc)
