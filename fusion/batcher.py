"""Async micro-batching: many coroutines submit single items, worker threads run batches.

The dispatcher never waits when a worker is idle and the wait is 0: a lone request runs at
once, and requests that arrive while the workers are busy form the next batch. A positive
`max_wait_s` holds a partial batch open that long for more requests to join. With
`workers` > 1, that many batches may run at once (each in its own thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    sizes: dict[int, int] = field(default_factory=dict)
    # Seconds each recent item spent queued before its batch started (the batching cost).
    waits_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    batch_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


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
        self._queue: deque[tuple[T, asyncio.Future[R], float]] = deque()
        self._arrived = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._free = asyncio.Semaphore(self.config.workers)
        # The batches in worker threads: stop() must answer their callers too.
        self._running: dict[asyncio.Task[None], list[tuple[T, asyncio.Future[R], float]]] = {}

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix=self.name
            )
            self._task = asyncio.create_task(self._dispatch(), name=f"{self.name}-dispatch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running, self._running = self._running, {}
        waiting = [entry for batch in running.values() for entry in batch]
        waiting.extend(self._queue)
        self._queue.clear()
        for batch_task in running:
            batch_task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for _, future, _ in waiting:
            if not future.done():
                future.set_exception(Overloaded(f"{self.name} stopped"))
        executor, self._executor = self._executor, None
        if executor is not None:
            # The running batch finishes in its thread; waiting for it must not block the loop.
            await asyncio.to_thread(executor.shutdown, True)

    async def submit(self, item: T) -> R:
        if self._task is None:
            raise RuntimeError(f"{self.name} is not running")
        if len(self._queue) >= self.config.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.config.max_queue} waiting)")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.perf_counter()))
        self._arrived.set()
        return await future

    async def _gather_more(self) -> None:
        deadline = time.monotonic() + self.config.max_wait_s
        while len(self._queue) < self.config.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _dispatch(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.config.max_wait_s > 0:
                await self._gather_more()
            # A batch takes what has queued by the time a worker is free.
            await self._free.acquire()
            batch = [
                self._queue.popleft() for _ in range(min(self.config.max_batch, len(self._queue)))
            ]
            live = [entry for entry in batch if not entry[1].cancelled()]
            if not live:
                self._free.release()
                continue
            task = asyncio.create_task(self._run(live), name=f"{self.name}-batch")
            self._running[task] = live
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._free.release()

    async def _run(self, live: list[tuple[T, asyncio.Future[R], float]]) -> None:
        started = time.perf_counter()
        self.stats.waits_s.extend(started - queued for _, _, queued in live)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._fn, [item for item, _, _ in live]
            )
            if len(results) != len(live):
                raise RuntimeError(f"{self.name} returned {len(results)} for {len(live)}")
        except Exception as exc:
            for _, future, _ in live:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future, _), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
        self._record(len(live), time.perf_counter() - started)

    def _record(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.busy_s += seconds
        stats.batch_s.append(seconds)
        stats.largest_batch = max(stats.largest_batch, size)
        stats.sizes[size] = stats.sizes.get(size, 0) + 1
