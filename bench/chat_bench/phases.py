"""The phases of a run: latency, throughput, idle connections, and the model alone by batch size."""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from common import load_average, percentile

from chat_bench.clients import Client, message, open_clients
from chat_bench.figures import (
    Connections,
    Latency,
    Load,
    Plan,
    Report,
    Sweep,
    Throughput,
    measured_load,
)
from chat_bench.models import ModelBench
from chat_bench.profiling import Sampler, start_sampler, stop_sampler
from chat_bench.server import (
    TURN_BATCHER,
    BatchCounts,
    Cpu,
    ServerUnderTest,
    batch_counts,
    counts_between,
    store_cpu_s,
)

# Turns and model calls alternate in blocks of this many messages, so that both see the
# same machine: other work on a shared machine comes and goes within a run.
BLOCK = 10
# The pause before each paced turn: longer than a turn's writes after its reply.
PACE_S = 0.1


async def latency_phase(
    server: ServerUnderTest, bench: ModelBench, plan: Plan, report: Report
) -> None:
    turns, warmup = plan.turns, plan.warmup_turns
    loads: list[Load] = []
    client = await Client.open(server.url, f"latency-{uuid.uuid4().hex[:8]}")
    acks: list[float] = []
    replies: list[float] = []
    paced: list[float] = []
    frames = 0
    model: list[float] = []
    server_cpu = Cpu(0.0, 0.0)
    model_cpu = 0.0
    texts = [message(warmup + i) for i in range(turns)]
    sampler: Sampler | None = None
    try:
        for i in range(warmup):
            await client.turn(message(i))
        await bench.run(functools.partial(bench.time_turns, [message(i) for i in range(warmup)]))
        sampler = start_sampler(plan, server, "latency")
        frames_before = client.frames
        with measured_load(loads):
            for first in range(0, turns, BLOCK):
                block = texts[first : first + BLOCK]
                cpu_started = server.cpu()
                for text in block:
                    ack, reply = await client.turn(text)
                    acks.append(ack)
                    replies.append(reply)
                # The server writes the last reply's turn after sending it: let it finish.
                await asyncio.sleep(0.05)
                server_cpu += server.cpu() - cpu_started
                frames += client.frames - frames_before
                block_model, block_cpu = await bench.run(functools.partial(bench.time_turns, block))
                model += block_model
                model_cpu += block_cpu
                # The same messages with a pause before each, as a person types: the previous
                # turn's writes are done when the next message arrives.
                for text in block:
                    await asyncio.sleep(PACE_S)
                    paced.append((await client.turn(text))[1])
                frames_before = client.frames
    finally:
        stop_sampler(sampler, "latency", len(replies), report)
        await client.close()
    with measured_load(loads):
        stages = await bench.run(functools.partial(bench.time_stages, texts))
    stage_p50 = {name: percentile(samples, 50) * 1000.0 for name, samples in stages.items()}
    turn_p50, turn_p99 = percentile(replies, 50) * 1000.0, percentile(replies, 99) * 1000.0
    model_p50, model_p99 = percentile(model, 50) * 1000.0, percentile(model, 99) * 1000.0
    report.latency = Latency(
        turns=turns,
        warmup_turns=warmup,
        turn_p50_ms=turn_p50,
        turn_p99_ms=turn_p99,
        turn_mean_ms=float(np.mean(replies) * 1000.0),
        ack_p50_ms=percentile(acks, 50) * 1000.0,
        model_p50_ms=model_p50,
        model_p99_ms=model_p99,
        encoder_p50_ms=stage_p50["text encoder (tokenizer + forward)"],
        stages_p50_ms=stage_p50,
        p50_ratio=turn_p50 / model_p50,
        p99_ratio=turn_p99 / model_p99,
        frames_per_turn=frames / turns,
        paced_p50_ms=percentile(paced, 50) * 1000.0,
        paced_p99_ms=percentile(paced, 99) * 1000.0,
        server_cpu_ms=server_cpu.total_s * 1000.0 / turns,
        event_loop_cpu_ms=server_cpu.event_loop_s * 1000.0 / turns,
        model_cpu_ms=model_cpu * 1000.0 / turns,
        load=loads[0],
        stages_load=loads[1],
    )


async def throughput_phase(
    server: ServerUnderTest, bench: ModelBench, plan: Plan, report: Report
) -> None:
    """Rounds of load on the server, each followed (server idle) by the model alone at the
    batch sizes the round produced, so that both see the same machine."""
    run_id = uuid.uuid4().hex[:6]
    names = [f"load-{run_id}-{i}" for i in range(plan.sessions)]
    clients = await open_clients(server.url, names, 16)
    latencies: list[float] = []
    sizes: Counter[int] = Counter()
    exact = True
    elapsed = server_model_s = model_s = model_cpu_s = server_model_cpu_s = store_s = 0.0
    server_cpu = Cpu(0.0, 0.0)
    batch_s: dict[int, list[float]] = {}
    started = load_average()
    sampler: Sampler | None = None
    messages = 0
    try:
        for round_ in range(plan.rounds):
            warmup = plan.warmup_s if round_ == 0 else 1.0
            if round_ == plan.rounds - 1:
                sampler = start_sampler(plan, server, "throughput")
            window = await load_round(server, clients, warmup, plan.duration_s / plan.rounds)
            if sampler is not None:
                stop_sampler(sampler, "throughput", len(window.latencies), report)
                sampler = None
            messages += len(window.latencies)
            latencies += window.latencies
            elapsed += window.seconds
            sizes.update(window.batches.sizes)
            exact = exact and window.batches.exact
            server_model_s += window.batches.model_s
            server_model_cpu_s += window.batches.model_cpu_s
            store_s += window.store_cpu_s
            server_cpu += window.cpu
            for size, count in window.batches.sizes.items():
                seconds, cpu_s = await bench.run(
                    functools.partial(
                        bench.time_batch,
                        size,
                        min_s=0.1 if plan.quick else 0.25,
                        min_reps=2 if plan.quick else 3,
                    )
                )
                batch_s.setdefault(size, []).append(seconds)
                model_s += seconds * count
                model_cpu_s += cpu_s * count
    finally:
        if sampler is not None:
            stop_sampler(sampler, "throughput", 0, report)
        await asyncio.gather(*(c.close() for c in clients))
    items = sum(size * n for size, n in sizes.items())
    rate = messages / elapsed
    model_rate = items / model_s if model_s else math.nan
    report.throughput = Throughput(
        sessions=plan.sessions,
        rounds=plan.rounds,
        duration_s=elapsed,
        messages=messages,
        messages_per_s=rate,
        turn_p50_ms=percentile(latencies, 50) * 1000.0 if latencies else math.nan,
        turn_p99_ms=percentile(latencies, 99) * 1000.0 if latencies else math.nan,
        batch_sizes=dict(sorted(sizes.items())),
        batch_sizes_exact=exact,
        mean_batch=items / max(1, sum(sizes.values())),
        server_model_busy=server_model_s / elapsed,
        server_model_s_per_item=server_model_s / items if items else math.nan,
        model_batch_s={size: float(np.median(s)) for size, s in sorted(batch_s.items())},
        model_messages_per_s=model_rate,
        ratio=rate / model_rate if model_rate else math.nan,
        server_cpu_ms=server_cpu.total_s * 1000.0 / max(1, messages),
        event_loop_cpu_ms=server_cpu.event_loop_s * 1000.0 / max(1, messages),
        model_cpu_ms=model_cpu_s * 1000.0 / max(1, items),
        server_model_cpu_ms=server_model_cpu_s * 1000.0 / max(1, items),
        store_cpu_ms=store_s * 1000.0 / max(1, messages),
        load=Load(started, load_average()),
    )


@dataclass(frozen=True, slots=True)
class Window:
    latencies: list[float]  # of the replies that arrived in the window
    seconds: float
    batches: BatchCounts
    cpu: Cpu  # the server's, in the window
    store_cpu_s: float  # its store thread's, in the window


async def load_round(
    server: ServerUnderTest, clients: Sequence[Client], warmup_s: float, duration_s: float
) -> Window:
    """Every client sends its next message as soon as its reply arrives, for `warmup_s`, then
    for a `duration_s` window; the window's replies and turn batches."""
    stop = asyncio.Event()
    done: list[tuple[float, float]] = []  # (perf_counter at the reply, seconds)

    async def chat(client: Client, offset: int) -> None:
        i = offset
        while not stop.is_set():
            _, seconds = await client.turn(message(i))
            done.append((time.perf_counter(), seconds))
            i += 1

    tasks = [asyncio.create_task(chat(c, 7 * n)) for n, c in enumerate(clients)]
    try:
        await asyncio.sleep(warmup_s)
        before = await server.metrics()
        cpu_before = server.cpu()
        start = time.perf_counter()
        await asyncio.sleep(duration_s)
        end = time.perf_counter()
        cpu = server.cpu() - cpu_before
        after = await server.metrics()
        stop.set()
        # Each client finishes its turn in flight; the server is idle once they have.
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The server's last writes of the round commit after its replies.
    await asyncio.sleep(0.2)
    return Window(
        [seconds for at, seconds in done if start <= at <= end],
        end - start,
        counts_between(batch_counts(before, TURN_BATCHER), batch_counts(after, TURN_BATCHER)),
        cpu,
        store_cpu_s(after) - store_cpu_s(before),
    )


async def connections_phase(server: ServerUnderTest, count: int, report: Report) -> None:
    loads: list[Load] = []
    # Let the start-up's last allocations and threads settle before the baseline.
    await asyncio.sleep(3.0)
    ready = server.rss_bytes()
    clients: list[Client] = []
    tenth = max(1, count // 10)
    with measured_load(loads):
        started = time.perf_counter()
        try:
            names = [f"idle-{i}" for i in range(count)]
            clients += await open_clients(server.url, names[:tenth], 32, events=False)
            await asyncio.sleep(1.0)
            after_tenth = server.rss_bytes()
            clients += await open_clients(server.url, names[tenth:], 32, events=False)
            opened = time.perf_counter() - started
            await asyncio.sleep(3.0)
            full = server.rss_bytes()
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    mb = 1024.0 * 1024.0
    report.connections = Connections(
        connections=count,
        rss_ready_mb=ready / mb,
        rss_open_mb=full / mb,
        delta_mb=(full - ready) / mb,
        per_connection_kb=(full - ready) / count / 1024.0,
        marginal_kb=(full - after_tenth) / max(1, count - tenth) / 1024.0,
        open_s=opened,
        load=loads[0],
    )


SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLATEAU_GAIN = 0.05


async def sweep(bench: ModelBench, quick: bool) -> Sweep:
    rates: dict[int, float] = {}
    for size in SWEEP_SIZES:
        seconds, _ = await bench.run(
            functools.partial(bench.time_batch, size, min_s=0.2 if quick else 0.5, min_reps=3)
        )
        rates[size] = size / seconds
    # Noise on a shared machine makes single steps unreliable: the smallest size that comes
    # within PLATEAU_GAIN of the best rate.
    best = max(rates.values())
    plateau = min(size for size, rate in rates.items() if rate >= best * (1.0 - PLATEAU_GAIN))
    return Sweep(rates, plateau)
