"""MicroBatcher with a real batch function: routing, batch sizes, failures, overload, stop."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from fusion.batcher import BatcherConfig, MicroBatcher, Overloaded

GATE_TIMEOUT_S = 10.0


class Squares:
    """Squares ints in a batch; records every batch, its thread, and can be held or poisoned."""

    def __init__(
        self, *, delay_s: float = 0.0, poison: int | None = None, short: bool = False
    ) -> None:
        self.delay_s = delay_s
        self.poison = poison
        self.short = short
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def hold(self) -> None:
        """The next batches block in the worker until release()."""
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [len(b) for b in self.batches]

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(items))
            self.threads.add(threading.current_thread().name)
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("test gate never released")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison is not None and self.poison in items:
            raise ValueError(f"poisoned batch {list(items)}")
        out = [i * i for i in items]
        return out[:-1] if self.short else out


Make = Callable[..., MicroBatcher[int, int]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[tuple[MicroBatcher[int, int], Squares]] = []

    def factory(fn: Squares, **config: Any) -> MicroBatcher[int, int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            fn, BatcherConfig(**config), name=f"tb-{uuid.uuid4().hex[:8]}"
        )
        batcher.start()
        made.append((batcher, fn))
        return batcher

    yield factory
    for batcher, fn in made:
        fn.release()
        await batcher.stop()


async def until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def wait_entered(fn: Squares) -> None:
    await until(fn.entered.is_set)


def batcher_threads(batcher: MicroBatcher[int, int]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(batcher.name)]


# routing and sizes


@pytest.mark.parametrize("max_wait_s", [0.0, 0.005])
async def test_results_map_back_to_callers(make: Make, max_wait_s: float) -> None:
    fn = Squares(delay_s=0.001)
    batcher = make(fn, max_batch=8, max_wait_s=max_wait_s)
    items = list(range(-50, 150))
    random.Random(7).shuffle(items)

    async def call(i: int) -> tuple[int, int]:
        await asyncio.sleep(random.random() * 0.01)
        return i, await batcher.submit(i)

    results = await asyncio.gather(*(call(i) for i in items))
    assert all(out == i * i for i, out in results)
    assert [i for i, _ in results] == items
    assert sorted(x for b in fn.batches for x in b) == sorted(items)


async def test_batches_never_exceed_max_batch(make: Make) -> None:
    fn = Squares(delay_s=0.002)
    batcher = make(fn, max_batch=7, max_wait_s=0.002)
    out = await asyncio.gather(*(batcher.submit(i) for i in range(100)))
    assert out == [i * i for i in range(100)]
    assert fn.sizes and max(fn.sizes) <= 7
    assert sum(fn.sizes) == 100
    assert batcher.stats.largest_batch <= 7


async def test_concurrent_submits_are_batched(make: Make) -> None:
    fn = Squares(delay_s=0.01)
    batcher = make(fn, max_batch=16)
    n = 64
    out = await asyncio.gather(*(batcher.submit(i) for i in range(n)))
    assert out == [i * i for i in range(n)]
    assert len(fn.batches) < n
    assert max(fn.sizes) > 1
    # Items keep their arrival order inside and across batches.
    assert [x for b in fn.batches for x in b] == list(range(n))


async def test_worker_runs_off_the_event_loop(make: Make) -> None:
    fn = Squares()
    batcher = make(fn)
    await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    await batcher.submit(11)
    assert len(fn.threads) == 1
    (thread,) = fn.threads
    assert thread.startswith(batcher.name)
    assert thread != threading.current_thread().name


async def test_lone_request_runs_at_once(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_wait_s=0.0)
    started = time.monotonic()
    assert await batcher.submit(9) == 81
    assert time.monotonic() - started < 1.0
    assert fn.sizes == [1]


async def test_max_wait_holds_partial_batch_open(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_batch=8, max_wait_s=0.5)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    assert await asyncio.gather(first, *rest) == [1, 4, 9]
    assert fn.batches == [[1, 2, 3]]


async def test_full_batch_does_not_wait_for_deadline(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_batch=4, max_wait_s=30.0)
    started = time.monotonic()
    out = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 10)
    assert out == [0, 1, 4, 9]
    assert time.monotonic() - started < 5.0
    assert fn.sizes == [4]


async def test_worker_takes_its_next_batch_while_the_loop_is_busy(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_batch=8)
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await until(lambda: batcher.depth == 2)
    fn.release()
    # The loop is blocked here: the worker must start the queued batch without it.
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while len(fn.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # noqa: ASYNC251
    assert fn.batches == [[0], [1, 2]]
    assert await asyncio.gather(head, *rest) == [0, 1, 4]


# failures


async def test_failing_batch_fails_every_waiter_and_batcher_survives(make: Make) -> None:
    fn = Squares(poison=-1)
    batcher = make(fn, max_batch=8)
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    doomed = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, -1, 3)]
    await until(lambda: batcher.depth == 4)
    fn.release()

    assert await head == 0
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert fn.batches[1] == [1, 2, -1, 3]
    assert all(isinstance(o, ValueError) for o in outcomes), outcomes
    assert len({id(o) for o in outcomes}) == 1  # the batch's one exception, to each waiter
    assert "poisoned" in str(outcomes[0])

    # Still serving, in batches and alone.
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5, 10))) == [
        25,
        36,
        49,
        64,
        81,
    ]
    assert await batcher.submit(4) == 16


async def test_wrong_result_count_fails_the_batch(make: Make) -> None:
    fn = Squares(short=True)
    batcher = make(fn, max_batch=8)
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await until(lambda: batcher.depth == 3)
    fn.release()
    outcomes = await asyncio.gather(head, *rest, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert "returned 2 for 3" in str(outcomes[1])
    fn.short = False
    assert await batcher.submit(6) == 36


async def test_cancelled_caller_is_skipped(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_batch=8)
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    tasks = {i: asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)}
    await until(lambda: batcher.depth == 3)
    tasks[2].cancel()
    fn.release()
    assert await head == 0
    assert await tasks[1] == 1
    assert await tasks[3] == 9
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert fn.batches == [[0], [1, 3]]


# overload and lifecycle


async def test_bounded_queue_raises_overloaded(make: Make) -> None:
    fn = Squares()
    batcher = make(fn, max_batch=2, max_queue=3)
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await until(lambda: batcher.depth == 3)

    with pytest.raises(Overloaded):
        await batcher.submit(99)
    assert batcher.depth == 3  # the refused item was not queued

    fn.release()
    assert await asyncio.gather(head, *queued) == [0, 1, 4, 9]
    assert 99 not in [x for b in fn.batches for x in b]
    assert max(fn.sizes) <= 2
    assert await batcher.submit(5) == 25  # room again once drained


async def test_config_validation_and_not_started() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Squares(), BatcherConfig(max_batch=0))
    with pytest.raises(ValueError):
        MicroBatcher(Squares(), BatcherConfig(max_queue=0))
    idle: MicroBatcher[int, int] = MicroBatcher(Squares(), name=f"tb-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RuntimeError):
        await idle.submit(1)
    await idle.stop()  # stopping a batcher that never started is harmless


async def test_stop_cleans_up() -> None:
    fn = Squares()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, name=f"tb-{uuid.uuid4().hex[:8]}")
    batcher.start()
    batcher.start()  # idempotent: still one worker
    assert len(batcher_threads(batcher)) == 1
    assert await asyncio.gather(*(batcher.submit(i) for i in range(10))) == [
        i * i for i in range(10)
    ]
    assert len(batcher_threads(batcher)) == 1

    await batcher.stop()
    assert batcher_threads(batcher) == []
    assert batcher.depth == 0
    with pytest.raises(RuntimeError):
        await batcher.submit(1)
    await batcher.stop()  # twice is harmless


async def test_stop_fails_queued_waiters() -> None:
    fn = Squares()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        fn, BatcherConfig(max_batch=1), name=f"tb-{uuid.uuid4().hex[:8]}"
    )
    batcher.start()
    fn.hold()
    head = asyncio.create_task(batcher.submit(0))
    await wait_entered(fn)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await until(lambda: batcher.depth == 2)

    # stop() joins the worker thread; let the in-flight batch finish shortly.
    threading.Timer(0.2, fn.release).start()
    await batcher.stop()
    outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 5)
    assert all(isinstance(o, Overloaded) for o in outcomes), outcomes
    assert fn.batches == [[0]]  # queued items never reached the function
    assert batcher_threads(batcher) == []
    head.cancel()


async def test_stop_answers_in_flight_waiters() -> None:
    fn = Squares()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, name=f"tb-{uuid.uuid4().hex[:8]}")
    batcher.start()
    fn.hold()
    head = asyncio.create_task(batcher.submit(3))
    await wait_entered(fn)
    threading.Timer(0.2, fn.release).start()
    await batcher.stop()
    try:
        # Either the computed result or an error is fine; waiting forever is not.
        done, _ = await asyncio.wait({head}, timeout=2.0)
        assert head in done, "in-flight caller still waiting after stop()"
        assert head.exception() is not None or head.result() == 9
    finally:
        head.cancel()


async def test_stop_does_not_block_the_event_loop() -> None:
    fn = Squares()
    batcher: MicroBatcher[int, int] = MicroBatcher(fn, name=f"tb-{uuid.uuid4().hex[:8]}")
    batcher.start()
    fn.hold()
    head = asyncio.create_task(batcher.submit(3))
    await wait_entered(fn)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    threading.Timer(0.5, fn.release).start()
    try:
        await batcher.stop()
        await asyncio.sleep(0.05)
    finally:
        tick_task.cancel()
        head.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.25, f"event loop stalled {max(gaps):.2f}s during stop()"


async def test_stats_are_consistent(make: Make) -> None:
    fn = Squares(delay_s=0.002)
    batcher = make(fn, max_batch=5)
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.busy_s) == (0, 0, 0.0)
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(i) for i in range(37)))
    await batcher.submit(100)
    elapsed = time.perf_counter() - started

    stats = batcher.stats
    assert stats.items == 38
    assert stats.batches == len(fn.batches)
    assert stats.largest_batch == max(fn.sizes) <= 5
    assert sum(stats.sizes.values()) == stats.batches
    assert sum(size * count for size, count in stats.sizes.items()) == stats.items
    assert stats.sizes == {s: fn.sizes.count(s) for s in set(fn.sizes)}
    assert 0.002 * stats.batches <= stats.busy_s <= elapsed


async def test_restart_after_stop_serves_again() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: [x * x for x in xs])
    batcher.start()
    assert await batcher.submit(3) == 9
    await batcher.stop()
    batcher.start()
    try:
        assert await batcher.submit(4) == 16
    finally:
        await batcher.stop()


# more than one worker


class Meeting(Squares):
    """Every batch waits until `count` batches are inside the function at once."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.together = threading.Barrier(count, timeout=GATE_TIMEOUT_S)

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.together.wait()
        return super().__call__(items)


async def test_two_workers_run_two_batches_at_once(make: Make) -> None:
    fn = Meeting(2)
    batcher = make(fn, max_batch=4, workers=2)
    # Eight requests: the first batch takes what queued first, the second the rest, and
    # neither can finish unless both run at the same time.
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert results == [i * i for i in range(8)]
    assert sorted(fn.sizes) == [4, 4]
    assert len(fn.threads) == 2


async def test_one_worker_never_overlaps_batches() -> None:
    fn = Squares(delay_s=0.005)
    inside = 0
    most = 0
    lock = threading.Lock()

    def counting(items: Sequence[int]) -> list[int]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            return fn(items)
        finally:
            with lock:
                inside -= 1

    batcher: MicroBatcher[int, int] = MicroBatcher(
        counting, BatcherConfig(max_batch=2), name="tb-one"
    )
    batcher.start()
    try:
        await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    finally:
        await batcher.stop()
    assert most == 1


async def test_stop_answers_callers_of_every_running_batch(make: Make) -> None:
    fn = Squares()
    fn.hold()
    batcher = make(fn, max_batch=2, workers=2)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
    await until(lambda: len(fn.batches) == 2)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)
    fn.release()
    await stopping
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, Overloaded) for o in outcomes)


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(Squares(), BatcherConfig(workers=0))
