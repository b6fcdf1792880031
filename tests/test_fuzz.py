"""Property-based fuzzing of every WebSocket route on a real server.

Hypothesis draws sequences of hostile frames (tests/support/fuzz_frames.py) and a real websockets
client sends them to a real server (with its speech models, for the voice routes); every
answer must be well formed, no answer may be an `internal` error, every close must carry a
documented code, nothing may be logged as an error, and a well-behaved client keeps being
served in parallel the whole time. bench/fuzz.py runs the same examples by the ten thousand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from assistant import (
    Models,
    ResponseGenerator,
    Settings,
    VoiceModels,
    issue_token,
)
from assistant.operators.sign_in_throttle import AuthThrottleConfig
from server import RunningServer, running
from tests.support.fuzz_frames import (
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
from tests.support.operator_helpers import make_operator

EXAMPLES_PER_ROUTE = 250
SECRET = "fuzz-secret"


@pytest.fixture
async def fuzz_server(
    models: Models, generator: ResponseGenerator, voice_models: VoiceModels, sqlite_url: str
) -> AsyncIterator[RunningServer]:
    settings = replace(
        Settings(),
        host="127.0.0.1",
        port=0,
        db_url=sqlite_url,
        device="cpu",
        widget_secret=SECRET,
        # Fuzzed keys fail to sign in all the time: no lockout, or the opening auth is refused.
        auth=AuthThrottleConfig(max_failures=0),
    )
    async with running(settings, models=models, generator=generator, voice=voice_models) as srv:
        yield srv


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors[:5]]


async def fuzz(
    srv: RunningServer, fuzzer: RouteFuzzer, caplog: pytest.LogCaptureFixture
) -> FuzzStats:
    """Run the examples while a chat customer is served; check what must always hold."""
    token = issue_token(SECRET, "fuzz-bystander", ttl_s=3600)
    stats, turns = await fuzz_beside(
        lambda: run_examples(fuzzer, EXAMPLES_PER_ROUTE),
        lambda stop: bystander_chat(srv, token, stop),
    )
    assert stats.examples == EXAMPLES_PER_ROUTE and stats.frames >= EXAMPLES_PER_ROUTE
    assert turns >= 3, "the bystander kept being served"
    no_errors_logged(caplog)
    return stats


async def no_call_outlives_its_connection(srv: RunningServer) -> None:
    """Once every connection has closed, no call (nor its tasks) is left behind."""
    deadline = asyncio.get_running_loop().time() + 30
    while srv.app.open:
        assert asyncio.get_running_loop().time() < deadline, "connections left open"
        await asyncio.sleep(0.05)
    assert not srv.runtime.voice.calls


def reached(stats: FuzzStats, *answers: str) -> None:
    """The examples got each of these answers at least once."""
    missing = [a for a in answers if not stats.answers[a]]
    assert not missing, f"never answered {missing}: {json.dumps(stats.summary())}"


async def test_fuzz_chat(fuzz_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stats = await fuzz(fuzz_server, chat_fuzzer(fuzz_server, SECRET), caplog)
    # The examples reached every branch of the parser and the session behind it.
    reached(stats, "error:invalid_json", "error:invalid_field", "error:unknown_type", "ack")
    assert stats.closes[1009] > 0 and stats.closes[1007] > 0, json.dumps(stats.summary())


async def test_fuzz_operator(fuzz_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    key = await make_operator(fuzz_server, f"fuzz-{uuid.uuid4().hex}", "admin")
    watcher = await make_operator(fuzz_server, f"watch-{uuid.uuid4().hex}", "agent")
    stats, calls = await fuzz_beside(
        lambda: run_examples(operator_fuzzer(fuzz_server, key), EXAMPLES_PER_ROUTE),
        lambda stop: bystander_operator(fuzz_server, watcher, stop),
    )
    assert stats.examples == EXAMPLES_PER_ROUTE
    reached(stats, "error:invalid_json", "error:invalid_field", "error:unknown_type", "result")
    assert calls >= 3, "the bystander kept being served"
    no_errors_logged(caplog)


async def test_fuzz_twilio(fuzz_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stats = await fuzz(fuzz_server, twilio_fuzzer(fuzz_server, SECRET), caplog)
    # Twilio gets no error messages: refusals close with 1008, a `stop` with 1000.
    assert stats.closes[1008] > 0 and stats.closes[1000] > 0, json.dumps(stats.summary())
    await no_call_outlives_its_connection(fuzz_server)


async def test_fuzz_voice(fuzz_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stats = await fuzz(fuzz_server, voice_fuzzer(fuzz_server, SECRET), caplog)
    reached(stats, "started", "error:invalid_frame", "error:unknown_type")
    await no_call_outlives_its_connection(fuzz_server)
