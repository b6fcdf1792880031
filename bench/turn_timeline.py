"""Where one chat turn's time goes: the server's milestones, from the message's arrival.

It starts the server (`server.py`, in its own process, fresh SQLite database) with
timestamps taken around the steps of the turn path, runs one session of turns against it
(back to back, then with a pause before each, as a person types) and prints the median
time, from the arrival of each `message` frame, at which each milestone happened:

    add_user_turn.start/.end    the message's row is written (the ack waits for it)
    read_turn.start/.end        the models' call, in the shared micro-batch
    model.start, model.busy     the worker thread's `_read_batch` on it, and its duration
    journal.start/.end          the first transaction of the frame journal after arrival
    ack.sent                    the ack handed to the connection's send queue
    reply.emitted / .sent       the final reply emitted by the session / handed to the queue
    finish_turn.start/.end      the turn's labels, reply row and profile written

    .venv/bin/python bench/turn_timeline.py            # 150 turns each way
    .venv/bin/python bench/turn_timeline.py --turns 50

The timestamps wrap methods of the server's classes by name (`--serve` is this script in
the server's place): a renamed method fails the run instead of measuring nothing. Each wrap
costs a few microseconds; the figures are for reading the order and the gaps, the targets
are measured by bench/chat.py.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import bench_server_env, migrate_server_db  # noqa: E402

from tests.support.server_process import ServerProcess  # noqa: E402

TEXTS = (
    "Hi, my new card still hasn't arrived, it was supposed to come yesterday.",
    "How do I change my PIN?",
    "Why was my transfer declined? I only tried to send 50 euros.",
    "What fees do you charge for withdrawing cash at an ATM?",
    "The transfer I sent three days ago is still pending.",
    "How do I freeze my card after losing it?",
)
PACE_S = 0.1
WARMUP = 20

Event = tuple[float, str, str | None]  # (perf_counter, milestone, client id or None)


# the server side (--serve)


def serve(argv: Sequence[str]) -> int:
    """Run server.py's main with timestamps; write them to $TIMELINE_OUT at exit."""
    import server
    from assistant.chat import connection as chat
    from assistant.chat import session
    from assistant.core import outbox
    from fusion import serving as runtime
    from profiles import store

    events: list[Event] = []

    def mark(name: str, key: str | None = None) -> None:
        events.append((time.perf_counter(), name, key))

    def around(cls: type, method: str, name: str, key: Callable[..., str | None]) -> None:
        original = getattr(cls, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            tag = key(*args, **kwargs)
            mark(f"{name}.start", tag)
            try:
                return await original(*args, **kwargs)
            finally:
                mark(f"{name}.end", tag)

        setattr(cls, method, timed)

    on_text = chat.ChatConnection.on_text

    async def arrived(self: Any, text: str) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            frame = json.loads(text)
            if frame.get("type") == "message":
                mark("arrived", frame.get("id"))
        await on_text(self, text)

    chat.ChatConnection.on_text = arrived  # type: ignore[method-assign]
    around(store.Store, "add_user_turn", "add_user_turn", lambda *a, **k: a[3])
    around(store.Store, "finish_turn", "finish_turn", lambda *a, **k: None)
    around(store.Store, "append_frames", "journal", lambda *a, **k: None)
    around(runtime.FusionRuntime, "read_turn", "read_turn", lambda *a, **k: None)

    read_batch = runtime.FusionRuntime._read_batch

    def timed_batch(self: Any, inputs: Any) -> Any:
        started = time.perf_counter()
        try:
            return read_batch(self, inputs)
        finally:
            events.append((started, "model.start", None))
            events.append((time.perf_counter(), "model.end", None))

    runtime.FusionRuntime._read_batch = timed_batch  # type: ignore[method-assign]

    put = outbox.Outbox.put

    def queued(self: Any, data: str | bytes) -> None:
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                frame = json.loads(data)
                if frame.get("type") == "ack":
                    mark("ack.sent", frame.get("id"))
                elif frame.get("type") == "reply":
                    mark("reply.sent")
        put(self, data)

    outbox.Outbox.put = queued  # type: ignore[method-assign]

    emit = session.ChatSession.emit

    def emitted(self: Any, frame: Any) -> int:
        if type(frame).__name__ == "Reply":
            mark("reply.emitted")
        return emit(self, frame)

    session.ChatSession.emit = emitted  # type: ignore[method-assign]

    def dump() -> None:
        Path(os.environ["TIMELINE_OUT"]).write_text(json.dumps(events), encoding="utf-8")

    atexit.register(dump)
    return server.main(argv)


# the client side


def milestones(events: Sequence[Event], first_id: int) -> dict[str, list[float]]:
    """For each message from `first_id` on, ms from its arrival to the first time each
    milestone happened (its own ack and row write; the first of everything else)."""
    out: dict[str, list[float]] = defaultdict(list)
    arrival: float | None = None
    seen: set[str] = set()
    busy: float | None = None
    for at, name, key in events:
        if name == "arrived":
            number = int(key[1:]) if key and key[1:].isdigit() else -1
            arrival = at if number >= first_id else None
            seen = set()
            busy = None
            continue
        if arrival is None or name in seen:
            continue
        if name in ("add_user_turn.start", "add_user_turn.end", "ack.sent") and key is None:
            continue
        # The end of something that started before this message (the previous turn's write).
        if name.endswith(".end") and name.replace(".end", ".start") not in seen:
            continue
        seen.add(name)
        out[name].append((at - arrival) * 1000.0)
        if name == "model.start":
            busy = at
        elif name == "model.end" and busy is not None:
            out["model.busy"].append((at - busy) * 1000.0)
    return out


async def _turn(ws: Any, client_id: str, text: str) -> float:
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "message", "id": client_id, "text": text}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "error":
            raise RuntimeError(f"error frame: {frame}")
        if frame["type"] == "reply":
            return (time.perf_counter() - started) * 1000.0


async def _session(url: str, turns: int, pace_s: float, first: int) -> list[float]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    async with connect(f"{url}/chat", ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "hello", "user": {"external_id": f"tl-{first}"}}))
        json.loads(await ws.recv())
        for i in range(WARMUP):
            await _turn(ws, f"m{i}", TEXTS[i % len(TEXTS)])
        for i in range(turns):
            if pace_s:
                await asyncio.sleep(pace_s)
            latencies.append(await _turn(ws, f"m{first + i}", TEXTS[i % len(TEXTS)]))
    return latencies


async def _run(turns: int, pace_s: float, tmp: Path, tag: str) -> tuple[list[float], list[Event]]:
    out = tmp / f"{tag}.json"
    env = {
        **bench_server_env(f"sqlite+aiosqlite:///{tmp / (tag + '.db')}"),
        "TIMELINE_OUT": str(out),
    }
    await asyncio.to_thread(migrate_server_db, env)
    server = await ServerProcess.spawn(
        env, tmp / f"{tag}.log", program=(sys.executable, __file__, "--serve")
    )
    try:
        await server.listening()
        latencies = await _session(server.url, turns, pace_s, WARMUP)
        await asyncio.sleep(0.3)
    finally:
        await server.stop()
    raw = json.loads(out.read_text(encoding="utf-8"))
    return latencies, [(float(at), str(name), key) for at, name, key in raw]


def _report(title: str, latencies: list[float], events: list[Event]) -> None:
    print(f"\n{title}: turn p50 {statistics.median(latencies):.2f} ms ({len(latencies)} turns)")
    rows = milestones(events, WARMUP)
    for name, values in sorted(rows.items(), key=lambda kv: statistics.median(kv[1])):
        if name == "model.busy":
            continue
        extra = ""
        if name == "model.start" and "model.busy" in rows:
            extra = f"   (busy {statistics.median(rows['model.busy']):.2f} ms)"
        print(f"  {name:<22} {statistics.median(values):7.2f} ms{extra}")


async def _main(turns: int) -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="turn-timeline-") as tmp:
        back, back_events = await _run(turns, 0.0, Path(tmp), "back-to-back")
        paced, paced_events = await _run(turns, PACE_S, Path(tmp), "paced")
    print(f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    _report("back to back", back, back_events)
    _report(f"paced ({PACE_S * 1000:.0f} ms before each message)", paced, paced_events)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        return serve(args[1:])
    parser = argparse.ArgumentParser(prog="bench/turn_timeline.py", description=__doc__)
    parser.add_argument("--turns", type=int, default=150, help="measured turns each way (150)")
    turns: int = parser.parse_args(args).turns
    asyncio.run(_main(turns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
