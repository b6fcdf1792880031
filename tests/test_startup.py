"""A server process from spawn to stop: /readyz waits for the speech models, and the JSON log
holds only JSON lines, says who writes the replies, and is not filled by probes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.conftest import Client
from tests.support.server_process import START_TIMEOUT_S, ServerProcess, default_env, free_port
from tests.support.server_process import http_get as get

POLL_S = 0.02


async def _readiness(server: ServerProcess) -> list[tuple[int, bytes]]:
    """Every /readyz answer from the moment the server listens until the first 200."""
    answers: list[tuple[int, bytes]] = []
    async with asyncio.timeout(START_TIMEOUT_S):
        while not answers or answers[-1][0] != 200:
            if server.process.returncode is not None:
                raise server.failed(f"the server exited with {server.process.returncode}")
            try:
                answers.append(await get(server.port, "/readyz", timeout_s=5.0))
            except OSError:  # not listening yet: the text models and the store come first
                await asyncio.sleep(POLL_S)
    return answers


def _records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)  # every line, whatever wrote it
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record)
        records.append(record)
    return records


async def test_ready_after_the_speech_models_and_the_json_log_stays_clean(
    sqlite_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    env = default_env(sqlite_url, {"ASSISTANT_LOG_FORMAT": "json"})
    server = await ServerProcess.spawn(env, log, port=free_port())
    try:
        answers = await _readiness(server)
        # The log file is complete up to here: the server wrote it before answering 200.
        loaded_before_ready = any(
            r["message"].startswith("speech models loaded") for r in _records(log)
        )
        await server.listening()
        for path in ("/healthz", "/readyz", "/metrics") * 3:
            status, _ = await get(server.port, path)
            assert status == 200
        async with connect(server.url + "/chat") as ws:
            await Client(ws).hello(user={"external_id": "log-reader"})
        assert await server.stop() == 0
    finally:
        if server.process.returncode is None:
            await server.kill()

    assert answers[0] == (503, b"speech models loading\n"), answers[:3]
    assert set(answers[:-1]) == {answers[0]} and answers[-1] == (200, b"ready\n")
    assert loaded_before_ready
    records = _records(log)
    messages = [r["message"] for r in records]
    assert "replies are written by the composer (ASSISTANT_LLM=none)" in messages
    order = [
        next(i for i, m in enumerate(messages) if m.startswith(prefix))
        for prefix in ("server listening on", "speech models loaded", "ready on")
    ]
    assert order == sorted(order), messages
    # websockets writes two INFO lines per HTTP answer and per WebSocket; probes write none.
    library = [r["message"] for r in records if r["logger"] == "websockets.server"]
    assert not [m for m in library if m.startswith("HTTP response sent")], library
    assert library.count("connection open") == 1
    assert library.count("connection closed") <= 1, library
