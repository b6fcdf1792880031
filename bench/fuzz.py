"""Fuzz every WebSocket route of a real server with generated hostile frames, and count.

Routes: /chat, /operator, /voice/twilio and /voice. The examples are the ones
tests/test_fuzz.py runs a few hundred of (tests/support/fuzz_frames.py): arbitrary JSON, frames
of every type with wrong or out-of-range fields, huge numbers, deep nesting, odd unicode and
lone surrogates, invalid UTF-8, binary garbage, oversized frames and valid frames out of order.
A real server on port 0 (fresh SQLite database, a widget secret, the real models, speech
included) takes `--per-route` examples on each route while a well-behaved client (on /operator
an operator, elsewhere a chat customer) is served in parallel. Every answer is checked as it
arrives: a frame that is not well formed, an `internal` error, a close with an undocumented
code, a dropped connection or a stalled server stops the run with exit status 1, and so does
anything the server logs as an error.

    .venv/bin/python bench/fuzz.py                      # 10,000 examples per route
    .venv/bin/python bench/fuzz.py --per-route 500 --routes /chat --seed 7

Prints, per route: examples, frames, connections opened, answers by type or error code,
closes by code, the bystander's completed turns or calls, errors logged, and the time taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from assistant import Settings, issue_token  # noqa: E402
from assistant.operators.sign_in_throttle import AuthThrottleConfig  # noqa: E402
from server import RunningServer, running  # noqa: E402
from tests.support.fuzz_frames import (  # noqa: E402
    FuzzFailure,
    FuzzStats,
    RouteFuzzer,
    bystander_chat,
    bystander_operator,
    chat_fuzzer,
    fuzz_beside,
    operator_fuzzer,
    run_examples,
    twilio_fuzzer,
    voice_fuzzer,
)

SECRET = "bench-fuzz-secret"
ROUTES = ("/chat", "/operator", "/voice/twilio", "/voice")


async def _fuzz_route(
    srv: RunningServer, route: str, count: int, seed: int | None
) -> tuple[FuzzStats, int]:
    if route == "/operator":
        operators = srv.runtime.operators
        _, key = await operators.create_operator(f"fuzz-{uuid.uuid4().hex}", "admin")
        _, watcher = await operators.create_operator(f"watch-{uuid.uuid4().hex}", "agent")
        op_fuzzer = operator_fuzzer(srv, key)
        return await fuzz_beside(
            lambda: run_examples(op_fuzzer, count, seed=seed),
            lambda stop: bystander_operator(srv, watcher, stop),
        )
    fuzzer: RouteFuzzer = {
        "/chat": chat_fuzzer,
        "/voice/twilio": twilio_fuzzer,
        "/voice": voice_fuzzer,
    }[route](srv, SECRET)
    token = issue_token(SECRET, "bench-bystander", ttl_s=24 * 3600)
    return await fuzz_beside(
        lambda: run_examples(fuzzer, count, seed=seed),
        lambda stop: bystander_chat(srv, token, stop),
    )


class _ErrorCount(logging.Handler):
    """Counts what the server logs at ERROR or above (tracebacks, lost tasks)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def _main(args: argparse.Namespace) -> int:
    errors = _ErrorCount()
    logging.getLogger().addHandler(errors)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "per_route": args.per_route,
        "routes": {},
    }
    print(f"machine: {report['machine']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            db_url=f"sqlite+aiosqlite:///{tmp}/fuzz.db",
            device="cpu",
            widget_secret=SECRET,
            # Fuzzed keys fail all the time: no lockout, or the opening auth is refused.
            auth=AuthThrottleConfig(max_failures=0),
        )
        async with running(settings, migrate_db=True) as srv:
            await srv.runtime.voice.load()
            for route in args.routes:
                started = time.perf_counter()
                try:
                    stats, served = await _fuzz_route(srv, route, args.per_route, args.seed)
                except FuzzFailure as failure:
                    print(f"{route}: FAILED: {failure}", flush=True)
                    return 1
                elapsed = time.perf_counter() - started
                summary = {
                    **stats.summary(),
                    "bystander": served,
                    "errors_logged": errors.count,
                    "seconds": round(elapsed, 1),
                }
                report["routes"][route] = summary
                print(f"{route}: {json.dumps(summary)}", flush=True)
                if errors.count:
                    return 1
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-route", type=int, default=10_000, help="examples per route")
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--seed", type=int, help="random examples from this seed (default: fixed)")
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
