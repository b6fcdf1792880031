"""Run a scripted six-turn conversation against a real server and write its transcript.

Starts the server on port 0 with a fresh SQLite database, sends the customer's behaviour
events (a card ordered two weeks ago, a failed payment), then six messages with different
moods, and writes what the server answered, with the intent and emotion it heard, to
docs/conversation.md (or --out), keeping the page's sections after the transcript (from its
first `## ` heading on). Nothing in the transcript is written by hand.

    .venv/bin/python scripts/demo_conversation.py [--out docs/conversation.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from assistant import Settings  # noqa: E402
from server import running  # noqa: E402

MESSAGES = [
    "Hi there",
    "My card payment just failed at the checkout, why?",
    "This is ridiculous, it failed AGAIN and I am furious!",
    "I'm really worried, I ordered my new card weeks ago and it still hasn't come.",
    "OK thanks, how do I activate it when it arrives?",
    "Thanks, that's all. Bye!",
]


def _events(now: datetime) -> list[dict[str, Any]]:
    def at(delta: timedelta) -> str:
        return (now - delta).isoformat()

    return [
        {"id": "e1", "name": "card_ordered", "at": at(timedelta(days=16)), "props": {}},
        {
            "id": "e2",
            "name": "page_view",
            "at": at(timedelta(minutes=9)),
            "props": {"path": "/cart"},
        },
        {
            "id": "e3",
            "name": "payment_failed",
            "at": at(timedelta(minutes=5)),
            "props": {"amount": 42.5, "currency": "EUR", "reason": "card_declined"},
        },
    ]


async def _until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] in (kind, "error"):
            return dict(frame)


async def converse(url: str) -> list[str]:
    lines: list[str] = []
    async with connect(url + "/chat") as ws:
        await ws.send(json.dumps({"type": "hello", "user": {"external_id": "demo", "name": "Ada"}}))
        await _until(ws, "welcome")
        now = datetime.now(UTC)
        await ws.send(json.dumps({"type": "events", "id": "b1", "items": _events(now)}))
        await _until(ws, "ack")
        lines.append("Behaviour events sent first: `card_ordered` (16 days ago), `page_view` of")
        lines.append(
            "`/c` (the cart) and `payment_failed` (42.50 EUR, card declined) a few minutes ago."
        )
        lines.append("")
        for index, text in enumerate(MESSAGES, start=1):
            await ws.send(json.dumps({"type": "message", "id": f"m{index}", "text": text}))
            reply = await _until(ws, "reply")
            intent = reply.get("intent", {})
            emotion = reply.get("emotion", {})
            lines.append(f"**Customer ({index}):** {text}")
            lines.append("")
            lines.append(
                f"_heard: intent `{intent.get('label')}` ({intent.get('confidence', 0):.2f}), "
                f"emotion `{emotion.get('label')}`; handoff: {reply.get('handoff')}_"
            )
            lines.append("")
            lines.append(f"**Assistant:** {reply.get('text', reply.get('message'))}")
            lines.append("")
    return lines


async def main_async() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            host="127.0.0.1", port=0, db_url=f"sqlite+aiosqlite:///{tmp}/demo.db", device="cpu"
        )
        async with running(settings, migrate_db=True) as server:
            lines = await converse(server.url)
    header = [
        "# A scripted conversation",
        "",
        "Produced by `scripts/demo_conversation.py` against a real server (default composer, no",
        "LLM, shipped models); rerun it to regenerate the transcript (the sections after it stay).",
        "It shows replies grounded in the knowledge base, details taken from the customer's",
        "behaviour events, and openings that follow the emotion the model heard.",
        "",
    ]
    return header + lines


def _sections_after(path: Path) -> list[str]:
    """The page's lines from its first `## ` heading on: written by hand, kept."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return lines[start:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "conversation.md")
    args = parser.parse_args(argv)
    lines = asyncio.run(main_async())
    kept = _sections_after(args.out)  # the transcript ends with an empty line
    args.out.write_text("\n".join(lines + kept) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
