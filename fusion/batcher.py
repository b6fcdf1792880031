"""Async micro-batching: many coroutines submit single items, worker threads run batches.

The workers never wait when the wait is 0: a lone request runs at once, and requests that
arrive while the workers are busy form the next batch. A positive `max_wait_s` holds a
partial batch open that long for more requests to join. With `workers` > 1, that many
batches may run at once (each in its own thread).

A worker thread takes its next batch itself as soon as it has handed its results to the
event loop: the loop only queues items and sets results, and a busy loop never keeps a
model waiting for its next batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """The batcher's queue is full; the caller should answer 'overloaded' and not retry at once."""


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    max_batch: int = 32
    max_wait_s: float = 0.0
    max_queue: int = 1024
    # Batches in flight at once.
    workers: int = 1


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0
    # CPU seconds of the threads that ran the batches: next to busy_s, what the model cost
    # beside the rest of the process (bench/chat.py compares it with the model alone).
    cpu_s: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)
    # Seconds each recent item spent queued before its batch started (the batching cost).
    waits_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    batch_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


_Entry = tuple[T, asyncio.Future[R], float]  # the item, its caller's future, when queued


class _Pool(Generic[T, R]):
    """One start's worker threads and the queue they take batches from.

    The queue and `stopping` belong to the lock; futures are resolved only on the loop (a
    worker only reads whether a caller cancelled its own).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[_Entry[T, R]] = deque()
        self.ready = threading.Condition(threading.Lock())
        self.stopping = False
        self.wake_scheduled = False
        # Each worker's batch while it runs: stop() must answer their callers too.
        self.running: dict[int, list[_Entry[T, R]]] = {}
        self.threads: list[threading.Thread] = []


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        config: BatcherConfig | None = None,
        *,
        name: str = "batcher",
    ) -> None:
        self.config = config or BatcherConfig()
        if min(self.config.max_batch, self.config.max_queue, self.config.workers) < 1:
            raise ValueError("max_batch, max_queue and workers must be at least 1")
        self.name = name
        self.stats = BatcherStats()
        self._fn = fn
        self._pool: _Pool[T, R] | None = None

    @property
    def depth(self) -> int:
        pool = self._pool
        return len(pool.queue) if pool is not None else 0

    def start(self) -> None:
        if self._pool is not None:
            return
        pool: _Pool[T, R] = _Pool(asyncio.get_running_loop())
        for index in range(self.config.workers):
            thread = threading.Thread(
                target=self._work, args=(pool, index), name=f"{self.name}_{index}", daemon=True
            )
            pool.threads.append(thread)
        self._pool = pool
        for thread in pool.threads:
            thread.start()

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with pool.ready:
            pool.stopping = True
            waiting = [entry for batch in pool.running.values() for entry in batch]
            waiting.extend(pool.queue)
            pool.queue.clear()
            pool.ready.notify_all()
        for _, future, _ in waiting:
            if not future.done():
                future.set_exception(Overloaded(f"{self.name} stopped"))
        # A running batch finishes in its thread; waiting for it must not block the loop.
        for thread in pool.threads:
            await asyncio.to_thread(thread.join)

    async def submit(self, item: T) -> R:
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"{self.name} is not running")
        if len(pool.queue) >= self.config.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.config.max_queue} waiting)")
        future: asyncio.Future[R] = pool.loop.create_future()
        with pool.ready:
            pool.queue.append((item, future, time.perf_counter()))
        if not pool.wake_scheduled:
            # Requests submitted in the same pass of the loop go to a worker together.
            pool.wake_scheduled = True
            pool.loop.call_soon(self._wake, pool)
        return await future

    @staticmethod
    def _wake(pool: _Pool[T, R]) -> None:
        pool.wake_scheduled = False
        with pool.ready:
            pool.ready.notify()

    def _next_batch(self, pool: _Pool[T, R]) -> list[_Entry[T, R]] | None:
        """Wait for work and take a batch of it (the lock is held); None once stopping."""
        config = self.config
        while True:
            while not pool.queue and not pool.stopping:
                pool.ready.wait()
            if pool.stopping:
                return None
            if config.max_wait_s > 0:
                deadline = time.monotonic() + config.max_wait_s
                while len(pool.queue) < config.max_batch and not pool.stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    pool.ready.wait(remaining)
                if pool.stopping:
                    return None
            batch = [pool.queue.popleft() for _ in range(min(config.max_batch, len(pool.queue)))]
            # A caller cancelled meanwhile needs no result.
            live = [entry for entry in batch if not entry[1].cancelled()]
            if live:
                return live

    def _work(self, pool: _Pool[T, R], index: int) -> None:
        while True:
            with pool.ready:
                batch = self._next_batch(pool)
                if batch is None:
                    return
                pool.running[index] = batch
                # Another worker may take what this batch left queued.
                if pool.queue:
                    pool.ready.notify()
            started = time.perf_counter()
            cpu_started = time.thread_time()
            outcome: Sequence[R] | Exception
            try:
                outcome = self._fn([item for item, _, _ in batch])
                if len(outcome) != len(batch):
                    raise RuntimeError(f"{self.name} returned {len(outcome)} for {len(batch)}")
            except Exception as exc:
                outcome = exc
            ended = time.perf_counter()
            cpu_s = time.thread_time() - cpu_started
            with pool.ready:
                del pool.running[index]
            try:
                pool.loop.call_soon_threadsafe(self._deliver, batch, outcome, started, ended, cpu_s)
            except RuntimeError:
                return  # the loop is closed: nobody is left to answer

    def _deliver(
        self,
        batch: list[_Entry[T, R]],
        outcome: Sequence[R] | Exception,
        started: float,
        ended: float,
        cpu_s: float,
    ) -> None:
        self.stats.waits_s.extend(started - queued for _, _, queued in batch)
        if isinstance(outcome, Exception):
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(outcome)
        else:
            for (_, future, _), result in zip(batch, outcome, strict=True):
                if not future.done():
                    future.set_result(result)
        self._record(len(batch), ended - started, cpu_s)

    def _record(self, size: int, seconds: float, cpu_s: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.busy_s += seconds
        stats.cpu_s += cpu_s
        stats.batch_s.append(seconds)
        stats.largest_batch = max(stats.largest_batch, size)
        stats.sizes[size] = stats.sizes.get(size, 0) + 1
