"""Multi-turn conversations on the dialogue server and on the baseline, in the same run.

    .venv/bin/python bench/conversations.py [--data DIR] [--limit N] [--seed S] [--workers W]
                                            [--turns FILE]

Two real servers (tests/support/server_process.py, SQLite each in a temporary folder): one as
configured, one with ASSISTANT_DIALOGUE=off. Both get the same seeded conversations
(bench/conversations_bench/script.py): a Banking77 test opening, one or two follow-ups written
for the benchmark (bench/conversations_bench/follow_ups.toml, never trained or tuned on), a
topic switch to another test utterance, sometimes a follow-up after it; every conversation is
a new user on its own WebSocket who waits for each reply. Prints, for both servers, the
follow-ups answered within the current topic (target >= 90%), the topic switches recognised
(>= 93%), the openings recognised and the clarifying questions on them (they are the whole
test set as first messages in a full run: <= 3%), the share of the baseline's wrong answers
that get a question instead, and the handoffs; then the figures as one JSON line. `--limit N`
runs the first N of the full run's conversations; `--turns FILE` writes every turn, what it
said and what each server made of it, as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    bench_server_env,
    describe_machine,
    load_average,
    migrate_server_db,
)
from conversations_bench.client import Outcome, converse  # noqa: E402
from conversations_bench.figures import ambiguity, server_figures  # noqa: E402
from conversations_bench.report import render, verdicts  # noqa: E402
from conversations_bench.script import (  # noqa: E402
    Conversation,
    Recipe,
    banking77_test,
    build,
    load_follow_ups,
)

from tests.support.server_process import server_process  # noqa: E402

DIALOGUE = "dialogue"
BASELINE = "baseline"
DIALOGUE_SWITCH = "ASSISTANT_DIALOGUE"  # "off": every message read alone, as before dialogue state


def server_env(folder: str, name: str) -> dict[str, str]:
    env = bench_server_env(f"sqlite+aiosqlite:///{folder}/{name}.db")
    env.setdefault("ASSISTANT_DEVICE", "cpu")
    env.pop(DIALOGUE_SWITCH, None)
    if name == BASELINE:
        env[DIALOGUE_SWITCH] = "off"
    return env


async def run_on(
    url: str, name: str, conversations: list[Conversation], workers: int, progress: Progress
) -> list[list[Outcome]]:
    results: list[list[Outcome]] = [[] for _ in conversations]
    queue: asyncio.Queue[Conversation] = asyncio.Queue()
    for conversation in conversations:
        queue.put_nowait(conversation)

    async def worker() -> None:
        while not queue.empty():
            c = queue.get_nowait()
            results[c.index] = await converse(url, f"bench-{name}-{c.index}", c)
            progress.done()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


class Progress:
    """A line on stderr every tenth of the conversations."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.started = time.perf_counter()

    def done(self) -> None:
        self.count += 1
        if self.count == self.total or self.count % max(1, self.total // 10) == 0:
            elapsed = time.perf_counter() - self.started
            print(
                f"  {self.count}/{self.total} conversations in {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def write_turns(
    path: Path, conversations: list[Conversation], results: dict[str, list[list[Outcome]]]
) -> None:
    with path.open("w", encoding="utf-8") as out:
        for name, outcomes in results.items():
            for c, said in zip(conversations, outcomes, strict=True):
                for turn, o in zip(c.turns, said, strict=True):
                    row = {"server": name, "conversation": c.index, "text": turn.text}
                    out.write(json.dumps({**row, **asdict(o)}) + "\n")


async def run(args: argparse.Namespace) -> None:
    utterances = banking77_test(args.data)
    follow_ups = load_follow_ups({u.intent for u in utterances})
    conversations = build(utterances, follow_ups, Recipe(seed=args.seed, limit=args.limit))
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        envs = {name: server_env(tmp, name) for name in (DIALOGUE, BASELINE)}
        await asyncio.gather(*(asyncio.to_thread(migrate_server_db, e) for e in envs.values()))
        async with (
            server_process(envs[DIALOGUE], Path(tmp) / "dialogue.log") as dialogue_server,
            server_process(envs[BASELINE], Path(tmp) / "baseline.log") as baseline_server,
        ):
            progress = Progress(2 * len(conversations))
            dialogue, baseline = await asyncio.gather(
                run_on(dialogue_server.url, DIALOGUE, conversations, args.workers, progress),
                run_on(baseline_server.url, BASELINE, conversations, args.workers, progress),
            )
            elapsed = time.perf_counter() - progress.started
    load_after = load_average()
    machine = describe_machine(envs[DIALOGUE]["ASSISTANT_DEVICE"])
    figures = {
        DIALOGUE: server_figures(dialogue, follow_ups),
        BASELINE: server_figures(baseline, follow_ups),
    }
    amb = ambiguity(dialogue, baseline)
    turns = sum(len(c.turns) for c in conversations)
    subset = f"the first {len(conversations)}" if args.limit else "all"
    when = datetime.now(UTC)
    print(
        f"machine: {machine}; load {load_before:.2f} before, {load_after:.2f} after; "
        f"{when:%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"conversations: {len(conversations)} ({subset}, seed {args.seed}), {turns} turns, on "
        f"each server; {len(follow_ups.phrasings)} held-out follow-ups; {elapsed:.0f} s"
    )
    print("\n".join(render(figures[DIALOGUE], figures[BASELINE], amb)))
    if args.turns is not None:
        write_turns(args.turns, conversations, {DIALOGUE: dialogue, BASELINE: baseline})
    print(
        json.dumps(
            {
                "benchmark": "conversations",
                "at": when.isoformat(timespec="seconds"),
                "machine": asdict(machine),
                "load": [round(load_before, 2), round(load_after, 2)],
                "seed": args.seed,
                "conversations": len(conversations),
                "turns": turns,
                "workers": args.workers,
                "seconds": round(elapsed, 1),
                "targets_met": verdicts(figures[DIALOGUE]),
                **{name: f.as_json() for name, f in figures.items()},
                "ambiguity": amb.as_json(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("ASSISTANT_DATA_DIR", "/work/shared/data"))
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--limit", type=int, default=0, help="the first N conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8, help="conversations at once, per server")
    parser.add_argument("--turns", type=Path, help="every turn's outcome, as JSON lines")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
