"""Chat performance against the real server process: latency, throughput, connections, startup.

One command measures, in one run, each figure next to the physical limit it is judged by:

1. **Latency.** One session, `--turns` messages sent back to back after a warm-up: the
   client-side time from sending `message` to receiving the final `reply`. In blocks of ten
   turns, alternating with them while the server is idle: the model compute the same
   messages need -- `FusionRuntime._read_batch` on one message (text encoder, fusion, intent
   and emotion heads) with a user's profile vector and the session's events, in a worker
   thread as the micro-batcher runs it -- loaded in this process with the server's settings
   and torch's default thread count (the server's). Targets: turn p50 <= 1.3x model p50,
   turn p99 <= 2x model p99. Also printed: the ack's latency, the same turns sent 100 ms
   after the previous reply (as a person types: the previous turn's writes are done), each
   model stage alone, and the CPU the server spends per turn (all threads, and its event
   loop thread) next to the model's.
2. **Throughput.** `--sessions` concurrent sessions, each sending its next message as soon
   as the previous reply arrives: messages per second over windows that add up to
   `--duration` seconds, and the "turn" micro-batcher's exact batch sizes in them (from
   `/metrics`). After each window, with the server idle, `_read_batch` alone on batches of
   each size that window produced, weighted by how often it occurred: the pure model
   throughput at the same batch sizes, the faster of one batch at a time on every core and
   two batches at once on one core each (what the server runs on a CPU). Target: server >=
   0.8x model. Also printed: the server's CPU per message, split by its own counters into
   its model workers, its store thread, its event loop and the rest, next to the model's
   CPU alone.
3. **Connections.** A fresh server: its resident memory (RSS) once ready, then after
   `--connections` idle connections that each said hello. Target: <= 150 MB for 2,000.
4. **Startup.** Seconds from spawning the server (database already migrated) to `/readyz`
   answering 200, for each server started. Target: <= 15 s. `server.py migrate` is timed
   apart. The knowledge base's embeddings are kept in the server's cache folder
   (`ASSISTANT_CACHE_DIR`, var/cache) by the run's first server at the latest, so the timed
   starts read them, as any restart does; a first start ever also embeds them.

The server runs as `python server.py` in its own process with a fresh, migrated SQLite
database (the default configuration) in a temporary directory; the clients are websockets
clients in this process. Two settings differ from the defaults, because the bench is one
client address sending as fast as it can: the message rate limits and the per-address
connection cap are off. Everything else (SQLite synchronous NORMAL, the grounded composer,
micro-batches of up to 32 with no wait) is the default and printed.

`--profile DIR` also samples the server with py-spy (`pip install py-spy`) during the
latency and throughput phases, writes the raw stacks there and prints where the server's
busy samples fall (model, tokenizer, SQL, JSON, websockets, event loop...) per message.
Sampling stops the server 100 times a second: take the other figures from a run without it.

    .venv/bin/python bench/chat.py                  # full run, about 4 minutes on 2 cores
    .venv/bin/python bench/chat.py --quick          # short run, same figures, less precise
    .venv/bin/python bench/chat.py --device cuda    # models on the GPU, in both processes
    .venv/bin/python bench/chat.py --quick --profile var/profile

It writes the figures to bench/results/chat.json (chat_quick.json with `--quick`; `--json`
to choose). The machine is shared and its speed drifts: every target is a ratio within one
run, and the 1-minute load average is recorded at the start and end of each phase.

The parts live in bench/chat_bench/ (figures, server, clients, models, profiling, phases,
report); the server process is started by tests/support/server_process.py.

Exit status 0 when the run completed, whether or not the targets were met; 1 when something
failed (the server did not start, an error frame, a timeout); 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Before anything imports transformers: an accidental model-hub call must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from chat_bench.figures import TARGET_CONNECTIONS, Plan, Report, Startup  # noqa: E402
from chat_bench.models import ModelBench  # noqa: E402
from chat_bench.phases import (  # noqa: E402
    connections_phase,
    latency_phase,
    sweep,
    throughput_phase,
)
from chat_bench.report import render, verdicts  # noqa: E402
from chat_bench.server import ServerUnderTest  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    BenchError,
    bench_server_env,
    describe_machine,
    load_averages,
    migrate_server_db,
    raise_file_limit,
)

from assistant import Settings, load_models  # noqa: E402
from tests.support.server_process import ServerFailed, free_port  # noqa: E402


def configuration(env: Mapping[str, str]) -> dict[str, str]:
    settings = Settings.from_env(env)
    generation = settings.generation
    composer = "grounded composer (no LLM)" if generation.llm == "none" else generation.llm
    return {
        "database": f"SQLite (WAL, synchronous {settings.sqlite_synchronous}), fresh file",
        "composer": composer,
        "batching": (
            f"max batch {settings.batch_size}, wait {settings.batch_wait_ms:g} ms, "
            f"queue {settings.batch_queue}"
        ),
        "model device setting": settings.device,
        "not default": (
            "message rate limits off (ASSISTANT_RATE_*_MESSAGES=0), per-address connection "
            "cap off (ASSISTANT_MAX_CONNECTIONS_PER_IP=0)"
        ),
        "server": "python server.py in its own process; clients: websockets in the bench",
    }


async def bench(plan: Plan) -> Report:
    raise_file_limit(plan.connections + 1024)
    load_start = load_averages()
    settings = Settings.from_env({"ASSISTANT_DEVICE": plan.device})
    try:
        models = load_models(settings)
    except Exception as exc:
        raise BenchError(f"could not load the models on {plan.device!r}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        env = bench_server_env(f"sqlite+aiosqlite:///{Path(tmp) / 'assistant.db'}", plan.device)
        report = Report(
            quick=plan.quick,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=describe_machine(str(models.device)),
            config=configuration(env),
            load_start=load_start,
        )
        model_bench = ModelBench(models)
        try:
            await run_phases(plan, env, Path(tmp), model_bench, report)
        finally:
            model_bench.close()
    report.load_end = load_averages()
    report.verdicts = verdicts(report)
    return report


async def run_phases(
    plan: Plan, env: Mapping[str, str], tmp: Path, bench: ModelBench, report: Report
) -> None:
    migrate_s = await asyncio.to_thread(migrate_server_db, env)
    ready: list[float] = []
    listening: list[float] = []
    server = await ServerUnderTest.spawn(env, tmp / "server-1.log", port=free_port())
    try:
        ready.append(await server.ready())
        listening.append(await server.listening())
        await latency_phase(server, bench, plan, report)
        await throughput_phase(server, bench, plan, report)
    finally:
        await server.stop()
    server = await ServerUnderTest.spawn(env, tmp / "server-2.log", port=free_port())
    try:
        ready.append(await server.ready())
        listening.append(await server.listening())
        await connections_phase(server, plan.connections, report)
    finally:
        await server.stop()
    report.startup = Startup(migrate_s=migrate_s, ready_s=ready, listening_s=listening)
    if plan.sweep or bench.models.device.type == "cuda":
        report.sweep = await sweep(bench, plan.quick)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/chat.py",
        description="Chat latency, throughput, connections and startup of the server process.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run with the same figures")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="model device (auto)"
    )
    parser.add_argument("--turns", type=int, help="latency turns (200; quick 60)")
    parser.add_argument("--sessions", type=int, default=64, help="concurrent sessions (64)")
    parser.add_argument("--duration", type=float, help="throughput window, s (20; quick 6)")
    parser.add_argument("--connections", type=int, help="idle connections (2000; quick 500)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the figures")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="sample the server with py-spy into DIR"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time the model alone at batch sizes 1 to 256 (always on CUDA)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quick: bool = args.quick
    plan = Plan(
        quick=quick,
        device=args.device,
        turns=args.turns or (60 if quick else 200),
        warmup_turns=10 if quick else 20,
        sessions=args.sessions,
        warmup_s=2.0 if quick else 5.0,
        duration_s=args.duration or (6.0 if quick else 20.0),
        rounds=2 if quick else 4,
        connections=args.connections or (500 if quick else TARGET_CONNECTIONS),
        profile=args.profile,
        sweep=args.sweep,
    )
    if plan.turns < 1 or plan.sessions < 1 or plan.duration_s <= 0 or plan.connections < 1:
        parser.error("--turns, --sessions, --duration and --connections must be positive")
    try:
        report = asyncio.run(bench(plan))
    except (BenchError, ServerFailed) as exc:
        print(f"bench/chat.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/chat.py: interrupted", file=sys.stderr)
        return 130
    print(render(report))
    out = args.json or RESULTS / ("chat_quick.json" if quick else "chat.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
