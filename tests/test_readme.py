"""README's quick start stays true: its frames parse, and its client example runs and prints
what README says it prints, against a real server."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from assistant.chat.protocol import Hello, Message, ProtocolError, parse_client_frame
from assistant.replies.knowledge_base import BANKING77_INTENTS
from server import RunningServer

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
DEFAULT_URL = "ws://127.0.0.1:8765"


def _block(language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", QUICK_START, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"the quick start should have one {language} block"
    return str(blocks[0])


CLIENT = _block("python")
SHOWN_OUTPUT = _block("text").splitlines()


def test_the_interactive_example_sends_frames_the_server_parses() -> None:
    sent = [line[2:] for line in QUICK_START.splitlines() if line.startswith("> ")]
    frames = [parse_client_frame(text) for text in sent]
    assert not [f for f in frames if isinstance(f, ProtocolError)], frames
    assert [type(f) for f in frames] == [Hello, Message]
    message = frames[1]
    assert isinstance(message, Message)
    # The program sends the same first message.
    assert f'"text": "{message.text}"' in CLIENT


async def test_the_client_example_runs_and_prints_what_readme_shows(
    server: RunningServer,
) -> None:
    assert CLIENT.count(DEFAULT_URL) == 1
    program = CLIENT.replace(DEFAULT_URL, server.url)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    printed = stdout.decode().splitlines()
    assert len(printed) == len(SHOWN_OUTPUT) == 2, printed
    for shown, line in zip(SHOWN_OUTPUT, printed, strict=True):
        # README cuts the long reply short with "...".
        if shown.endswith(", ..."):
            assert line.startswith(shown.removesuffix(" ...")), (shown, line)
        else:
            assert line == shown
    # A question the shipped (banking) assistant answers, not one it refuses or misreads.
    label = printed[1].split(" | ", 1)[0]
    assert label in BANKING77_INTENTS
