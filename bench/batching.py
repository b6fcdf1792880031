"""Micro-batching throughput: concurrent text-encode requests against one at a time.

Loads the text encoder once behind the server's micro-batcher (`FusionRuntime`) and, in one
run, measures:

- **one at a time**: one caller submits a message, awaits its embedding, submits the next;
- **concurrent**: `--clients` callers (64 by default) do the same at once for the same time,
  so the batcher gathers their requests into shared forwards.

It prints both throughputs and their ratio (target: >= 2.5 on a 2-core CPU), the batch sizes
seen, and the p50/p99 time a request waited in the queue before its batch started, next to
the bound it must stay under: the configured wait plus one batch (the p99 batch duration).

    .venv/bin/python bench/batching.py
    .venv/bin/python bench/batching.py --clients 64 --seconds 10 --wait-ms 2 --json var/b.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from common import cpu_model, percentile
from tqdm import tqdm

from fusion import BatcherConfig, FusionConfig, FusionRuntime

MESSAGES = [
    "My card payment was declined at the supermarket this morning.",
    "Where is the new card you sent me last week?",
    "I want to cancel the transfer I made an hour ago.",
    "Why was I charged a fee for withdrawing cash?",
    "How long does a top-up by bank transfer take?",
    "Someone took money from my account without my permission.",
    "Can I change the PIN of my card in the app?",
    "The exchange rate you applied looks wrong to me.",
    "My refund has not shown up yet, it has been ten days.",
    "I forgot my passcode and cannot log in.",
    "Is it possible to get a virtual card for online shopping?",
    "The ATM kept my card, what do I do now?",
    "Please close my account.",
    "Hi there",
    "Which currencies can I hold in my account?",
    "I was charged twice for the same coffee, can you fix it?",
]


async def _closed_loop(runtime: FusionRuntime, clients: int, seconds: float) -> int:
    """`clients` callers each submit, await, submit again, until the time is up."""
    deadline = time.perf_counter() + seconds
    done = 0
    progress = tqdm(total=None, desc=f"{clients} caller(s)", unit="req", leave=False)

    async def caller(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < deadline:
            await runtime.encode_text(MESSAGES[index % len(MESSAGES)])
            index += 1
            done += 1
            progress.update(1)

    await asyncio.gather(*(caller(i) for i in range(clients)))
    progress.close()
    return done


async def run(args: argparse.Namespace) -> dict[str, object]:
    config = FusionConfig(
        device=args.device,
        batcher=BatcherConfig(max_batch=args.max_batch, max_wait_s=args.wait_ms / 1000.0),
    )
    runtime = FusionRuntime(config)
    runtime.start()
    try:
        await _closed_loop(runtime, args.clients, 2.0)  # warm-up: allocator, kernels
        started = time.perf_counter()
        single = await _closed_loop(runtime, 1, args.seconds)
        single_rate = single / (time.perf_counter() - started)

        stats = runtime.text_batcher.stats
        stats.waits_s.clear()
        stats.batch_s.clear()
        stats.sizes.clear()
        started = time.perf_counter()
        many = await _closed_loop(runtime, args.clients, args.seconds)
        many_rate = many / (time.perf_counter() - started)
        waits_ms = [w * 1000.0 for w in stats.waits_s]
        batch_ms = [b * 1000.0 for b in stats.batch_s]
        sizes = dict(sorted(stats.sizes.items()))
    finally:
        await runtime.stop()
    bound_ms = args.wait_ms + percentile(batch_ms, 99)
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(runtime.device),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": {
            "clients": args.clients,
            "max_batch": args.max_batch,
            "wait_ms": args.wait_ms,
            "seconds": args.seconds,
        },
        "one_at_a_time_per_s": single_rate,
        "concurrent_per_s": many_rate,
        "ratio": many_rate / single_rate,
        "batch_sizes": sizes,
        "wait_p50_ms": percentile(waits_ms, 50),
        "wait_p99_ms": percentile(waits_ms, 99),
        "batch_p99_ms": percentile(batch_ms, 99),
        "wait_bound_ms": bound_ms,
        "wait_within_bound": percentile(waits_ms, 99) <= bound_ms,
    }


def _print(result: dict[str, object]) -> None:
    machine = result["machine"]
    assert isinstance(machine, dict)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']}, device {machine['device']}"
    )
    print(f"config:  {result['config']}")
    rows = [
        ("one at a time", f"{result['one_at_a_time_per_s']:.1f} req/s"),
        ("concurrent", f"{result['concurrent_per_s']:.1f} req/s"),
        ("ratio", f"{result['ratio']:.2f}x (target >= 2.5)"),
        ("batch sizes", str(result["batch_sizes"])),
        ("queue wait p50", f"{result['wait_p50_ms']:.2f} ms"),
        ("queue wait p99", f"{result['wait_p99_ms']:.2f} ms"),
        ("bound", f"{result['wait_bound_ms']:.2f} ms (wait + p99 batch)"),
        ("within bound", str(result["wait_within_bound"])),
    ]
    for name, value in rows:
        print(f"  {name:<16}{value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
