"""The server's models loaded in the bench's own process, timed as the micro-batcher runs them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import torch
from chat_messages import MESSAGES
from common import usable_cores

from assistant import Models
from chat_bench.clients import EVENTS, message
from fusion import FuseRequest, TurnInput
from fusion.behaviour import Event

# torch's default, taken before a model worker changes its own thread's count.
DEFAULT_THREADS = torch.get_num_threads()

T = TypeVar("T")


class ModelBench:
    """The server's models loaded here, timed in one worker thread as the batcher runs them."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-bench")
        self.now = datetime.now(UTC)
        self.events = [Event(n, self.now - timedelta(minutes=m), p) for n, p, m in EVENTS]
        self.profile = self._profile()
        # What the server runs by default (ASSISTANT_BATCH_WORKERS unset).
        self.workers = 2 if models.device.type == "cpu" and usable_cores() >= 2 else 1

    def _profile(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A user's profile as the server holds it after a few turns of this conversation."""
        state = None
        for text in MESSAGES[:4]:
            reading = self.models._read_batch([TurnInput(text, None, self.events, self.now)])[0]
            state = self.models.update_profile(state, reading.fused, 60.0)
        assert state is not None
        return state.vector

    def turn_input(self, text: str) -> TurnInput:
        return TurnInput(text, self.profile, self.events, self.now)

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def time_turns(self, texts: Sequence[str]) -> tuple[list[float], float]:
        """Seconds of `_read_batch` on one message, per message; and the CPU seconds of all."""
        read = self.models._read_batch
        samples = []
        cpu = 0.0
        for text in texts:
            turn = self.turn_input(text)
            cpu_started = time.process_time()
            started = time.perf_counter()
            read([turn])
            samples.append(time.perf_counter() - started)
            cpu += time.process_time() - cpu_started
        return samples, cpu

    def time_stages(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Each stage of a turn's model compute alone, one message per call."""
        models = self.models
        encoder = models.text_encoder
        stages: dict[str, list[float]] = {
            "tokenizer": [],
            "text encoder (tokenizer + forward)": [],
            "fusion": [],
            "intent + emotion heads": [],
        }
        for text in texts:
            started = time.perf_counter()
            encoder.tokenizer(
                [text],
                padding=True,
                truncation=True,
                max_length=encoder.config.max_tokens,
                return_tensors="pt",
            )
            stages["tokenizer"].append(time.perf_counter() - started)
            started = time.perf_counter()
            vector = encoder.encode([text])
            stages["text encoder (tokenizer + forward)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            models.fusion.fuse_many([FuseRequest(vector[0], None, self.events, self.now)])
            stages["fusion"].append(time.perf_counter() - started)
            started = time.perf_counter()
            models.understanding.predict_many(vector, [self.profile], [None], [text])
            stages["intent + emotion heads"].append(time.perf_counter() - started)
        return stages

    def time_batch(self, size: int, min_s: float, min_reps: int) -> tuple[float, float]:
        """Seconds per batch of `_read_batch` on `size` different messages, and its CPU
        seconds: the better of one batch at a time on every core and, as the server may run
        them, `workers` batches at once (the server's default), each on its share of the cores."""
        batch = [self.turn_input(message(i)) for i in range(size)]
        alone = self._batches_at_once(batch, 1, min_s, min_reps)
        if size == 1 or self.workers < 2:
            return alone
        together = self._batches_at_once(batch, self.workers, min_s, min_reps)
        return min(alone, together)

    def _batches_at_once(
        self, batch: list[TurnInput], workers: int, min_s: float, min_reps: int
    ) -> tuple[float, float]:
        """Median wall seconds per batch with `workers` threads each running batches back to
        back on DEFAULT_THREADS // workers torch threads; mean CPU seconds per batch."""
        threads = max(1, DEFAULT_THREADS // workers)
        read = self.models._read_batch

        def worker(samples: list[float]) -> None:
            torch.set_num_threads(threads)
            read(batch)
            spent = 0.0
            while len(samples) < min_reps or spent < min_s:
                started = time.perf_counter()
                read(batch)
                samples.append(time.perf_counter() - started)
                spent += samples[-1]

        per_worker: list[list[float]] = [[] for _ in range(workers)]
        cpu_started = time.process_time()
        pool = [threading.Thread(target=worker, args=(s,)) for s in per_worker]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        cpu_s = time.process_time() - cpu_started
        torch.set_num_threads(DEFAULT_THREADS)
        # The CPU time covers each worker's untimed first batch too.
        done = sum(len(s) for s in per_worker) + workers
        # `workers` batches run in the time of one: each batch's share of the wall time.
        return float(np.median([x for s in per_worker for x in s])) / workers, cpu_s / done
