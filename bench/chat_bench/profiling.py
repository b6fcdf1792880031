"""`--profile`: py-spy samples the server during a phase; where its busy samples fall."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import BenchError

from chat_bench.figures import Plan, Report
from chat_bench.server import TURN_BATCHER, ServerUnderTest


class Sampler:
    """py-spy recording the server during one phase (raw collapsed stacks, idle excluded)."""

    RATE = 100

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self._process = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.RATE),
                "--format",
                "raw",
                "--threads",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# Where a sampled stack's time goes. Libraries first, wherever they are in the stack, the
# highest-ranked winning: a JSON encoder called by the session counts as JSON, SQLAlchemy
# called by the store as SQL. A stack in none of them belongs to its innermost frame in the
# project (session logic) or in asyncio (event loop): every stack on the event loop thread
# starts in server.py's main. Paths as py-spy prints them (relative to sys.path).
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tokenizer", ("tokenizers/", "transformers/tokenization_")),
    ("model", ("torch/", "transformers/", "fusion/", "numpy/", "sklearn/")),
    ("SQL/ORM", ("sqlalchemy/", "aiosqlite/", "sqlite3/", "profiles/", "greenlet/")),
    ("JSON", ("json/", "assistant/chat/protocol.py")),
    ("websockets", ("websockets/",)),
    (
        "reply composer",
        (
            "assistant/replies/composer.py",
            "assistant/replies/generation.py",
            "assistant/replies/retrieval.py",
            "assistant/replies/deltas.py",
            "assistant/replies/prompting.py",
            "assistant/replies/knowledge_base.py",
            "assistant/replies/profile_summary.py",
            "langchain_core/",
        ),
    ),
    ("logging and metrics", ("logging/", "prometheus_client/", "assistant/core/logs.py")),
)
# The batcher and the runtime's submit run on the event loop: their frames are not the model.
NOT_MODEL = ("fusion/batcher.py", "fusion/serving.py")
OWN_CODE = ("assistant/", "server.py")
EVENT_LOOP = ("asyncio/", "selectors.py", "concurrent/", "threading.py", "queue.py")
# Waiting, not working: py-spy's idle detection misses these blocking calls into C (an
# empty queue's get, epoll). aiosqlite's line 59 is its thread's wait for the next call;
# its line 158 is a statement's `await` on that thread, which py-spy shows on the event loop
# thread (through SQLAlchemy's greenlet) while the loop itself waits in epoll: the thread's
# CPU time from /proc only agrees with the samples once these are left out.
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "Connection._execute (aiosqlite/core.py:158)",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)


def _path(frame: str) -> str:
    _, _, where = frame.rpartition(" (")
    return where.rstrip(")").rpartition(":")[0]


def _category(frames: Sequence[str]) -> str:
    if frames and frames[-1].startswith(IDLE_LEAVES):
        return "idle"
    paths = [_path(frame) for frame in frames]
    best = len(LIBRARIES)
    for path in paths:
        for rank, (_, prefixes) in enumerate(LIBRARIES[:best]):
            if path.startswith(prefixes) and not (rank == 1 and path.startswith(NOT_MODEL)):
                best = rank
                break
    if best < len(LIBRARIES):
        return LIBRARIES[best][0]
    for path in reversed(paths):
        if path.startswith(OWN_CODE) or path.startswith(NOT_MODEL):
            return "session logic"
        if path.startswith(EVENT_LOOP):
            return "event loop"
    return "other"


def _thread_kind(thread: str) -> str:
    name = thread.partition(": ")[2] or thread
    if name == "MainThread":
        return "event loop thread"
    if name.startswith(f"{TURN_BATCHER}_"):
        return "model worker (turn batcher)"
    if name.startswith("asyncio_"):
        return "asyncio.to_thread workers"
    return "other threads (aiosqlite, ...)"


def summarise_profile(path: Path, messages: int) -> dict[str, Any]:
    """Busy samples per category and per thread, as shares. Per message in the JSON too, but
    a sample counts whenever a thread is not idle -- also while it waits for the GIL or for
    a core -- so the CPU per message comes from the process's own accounting instead."""
    by_category: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        category = _category(frames)
        if category == "idle":
            continue
        by_category[category] += count
        by_thread[_thread_kind(thread)] += count
        total += count

    def table(counts: Counter[str]) -> dict[str, dict[str, float]]:
        return {
            name: {
                "share": n / total if total else 0.0,
                "ms_per_message": n * 1000.0 / Sampler.RATE / max(1, messages),
            }
            for name, n in counts.most_common()
        }

    return {
        "samples": total,
        "messages": messages,
        "categories": table(by_category),
        "threads": table(by_thread),
        "raw": str(path),
    }


def start_sampler(plan: Plan, server: ServerUnderTest, phase: str) -> Sampler | None:
    if plan.profile is None:
        return None
    plan.profile.mkdir(parents=True, exist_ok=True)
    return Sampler(server.pid, plan.profile / f"{phase}.raw")


def stop_sampler(sampler: Sampler | None, phase: str, messages: int, report: Report) -> None:
    if sampler is None:
        return
    sampler.stop()
    if sampler.out.exists():
        report.profile[phase] = summarise_profile(sampler.out, messages)
