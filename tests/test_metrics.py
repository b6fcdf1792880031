"""GET /metrics from a real server, parsed with prometheus_client's own parser: turns, errors
on every route, micro-batches, the chat model's fallbacks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from assistant import Models, ResponseGenerator, Settings
from assistant.replies.llm_config import GenerationConfig
from server import RunningServer, running
from tests.conftest import Client, ClientFactory, ServerFactory

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(srv: RunningServer) -> tuple[str, Samples]:
    """The Content-Type and every sample of one scrape."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    assert status_line.split()[1] == "200", status_line
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return headers["content-type"], samples


def value(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    return samples.get((name, frozenset((labels or {}).items())), 0.0)


async def test_metrics_move_as_turns_happen(
    server: RunningServer, open_client: ClientFactory
) -> None:
    content_type, before = await scrape(server)
    assert content_type.startswith("text/plain; version=")
    assert value(before, "assistant_connections", {"route": "/chat"}) == 0
    assert value(before, "assistant_redis_up") == 0, "no Redis configured"

    client = await open_client()
    await client.hello(user={"external_id": "metered"})
    await client.send({"type": "message", "id": "m1", "text": "My card payment was declined"})
    await client.recv_until("reply")
    await client.send("not json")
    assert (await client.recv())["code"] == "invalid_json"

    _, during = await scrape(server)
    assert value(during, "assistant_connections", {"route": "/chat"}) == 1
    assert value(during, "assistant_live_sessions") == 1
    assert value(during, "assistant_messages_total") == 1
    assert value(during, "assistant_turns_total") == 1
    assert value(during, "assistant_turn_latency_seconds_count") == 1
    assert 0 < value(during, "assistant_turn_latency_seconds_sum") < 60
    assert value(during, "assistant_turn_latency_seconds_bucket", {"le": "+Inf"}) == 1
    errors = {"route": "/chat", "code": "invalid_json"}
    assert value(during, "assistant_errors_total", errors) == 1
    # The models' micro-batchers are shared by every server of this test run: compare.
    models = {
        dict(labels)["model"] for name, labels in during if name == "assistant_batch_size_count"
    }
    assert models, "every model's micro-batcher is exported"
    grew = []
    for model in models:
        labels = {"model": model}
        count = value(during, "assistant_batch_size_count", labels)
        assert ("assistant_batch_queue_depth", frozenset(labels.items())) in during
        assert value(during, "assistant_batch_size_bucket", {**labels, "le": "+Inf"}) == count
        assert value(during, "assistant_model_seconds_count", labels) == count
        # Exact sizes (bench/chat.py compares throughput at them): the same batches.
        exact = {
            int(dict(key)["size"]): n
            for (name, key), n in during.items()
            if name == "assistant_batches_total" and dict(key)["model"] == model
        }
        assert sum(exact.values()) == count
        assert sum(size * n for size, n in exact.items()) == value(
            during, "assistant_batch_size_sum", labels
        )
        if count > value(before, "assistant_batch_size_count", labels):
            grew.append(model)
            assert value(during, "assistant_model_seconds_sum", labels) > value(
                before, "assistant_model_seconds_sum", labels
            )
            # The threads that ran the batch spent CPU on it (bench/chat.py reads this).
            assert value(during, "assistant_model_cpu_seconds_total", labels) > value(
                before, "assistant_model_cpu_seconds_total", labels
            )
    assert grew, "the turn went through the models' micro-batches"
    # The turn's rows were written on the SQLite store's own thread.
    assert value(during, "assistant_store_thread_cpu_seconds") > value(
        before, "assistant_store_thread_cpu_seconds"
    )

    await client.ws.close()
    for _ in range(100):
        _, after = await scrape(server)
        if value(after, "assistant_connections", {"route": "/chat"}) == 0:
            break
        await asyncio.sleep(0.05)
    assert value(after, "assistant_connections", {"route": "/chat"}) == 0
    assert value(after, "assistant_turns_total") == 1


async def test_each_server_counts_its_own(
    server: RunningServer, open_client: ClientFactory, start_server: ServerFactory
) -> None:
    client = await open_client()
    await client.hello(user={"external_id": "counted-once"})
    await client.send({"type": "message", "id": "m1", "text": "hello"})
    await client.recv_until("reply")
    async with start_server() as other:
        _, mine = await scrape(server)
        _, theirs = await scrape(other)
    assert value(mine, "assistant_turns_total") == 1
    assert value(theirs, "assistant_turns_total") == 0


async def test_voice_errors_count_by_code(server: RunningServer) -> None:
    async with connect(server.url + "/voice") as ws:
        await ws.send(json.dumps({"type": "start", "encoding": "pcm16", "sample_rate": 44100}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["code"] == "unsupported_audio"
        await ws.send(b"\x00\x00" * 160)
        await ws.send(b"\x00\x00" * 160)  # told once: one error frame, one count
        await ws.send("not json")
        codes = [json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] for _ in range(2)]
        assert codes == ["start_required", "invalid_json"]
    # Twilio has no error message: what it is refused or ignored counts the same way.
    async with connect(server.url + "/voice/twilio") as ws:
        await ws.send(b"\x00")
        dtmf = {"track": "inbound_track", "digit": "1"}
        await ws.send(
            json.dumps({"event": "dtmf", "sequenceNumber": "1", "streamSid": "MZ1", "dtmf": dtmf})
        )
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008
    _, samples = await scrape(server)
    errors = {
        (dict(labels)["route"], dict(labels)["code"]): n
        for (name, labels), n in samples.items()
        if name == "assistant_errors_total"
    }
    assert errors == {
        ("/voice", "unsupported_audio"): 1,
        ("/voice", "start_required"): 1,
        ("/voice", "invalid_json"): 1,
        ("/voice/twilio", "invalid_frame"): 1,
        ("/voice/twilio", "start_required"): 1,
    }


# Each fallback reason and a LangChain fake chat model that causes it; the fake model stands
# behind an OpenAI-compatible configuration whose secrets must never reach the log.
FALLBACK_MODELS: dict[str, Callable[[], BaseChatModel]] = {
    "error": lambda: FakeListChatModel(responses=["never sent"], error_on_chunk_number=0),
    "timeout": lambda: FakeListChatModel(responses=["too slow"], sleep=5.0),
    "empty": lambda: FakeListChatModel(responses=["   "]),
}
LLM_CONFIG = GenerationConfig(
    llm="openai",
    model="house-model",
    base_url="http://reader:hunter2@127.0.0.1:9/v1?api-key=query-secret",
    api_key="sk-never-logged",
    timeout_s=0.2,
)
SECRETS = ("hunter2", "query-secret", "sk-never-logged")


@pytest.mark.parametrize("reason", sorted(FALLBACK_MODELS))
async def test_llm_fallbacks_count_by_reason_and_log_the_endpoint(
    reason: str,
    models: Models,
    generator: ResponseGenerator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = ResponseGenerator(
        generator.kb, generator.retriever, config=LLM_CONFIG, chat_model=FALLBACK_MODELS[reason]()
    )
    settings = Settings(host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu")
    endpoint = "openai model house-model at http://127.0.0.1:9/v1"
    caplog.set_level(logging.INFO)
    async with running(settings, models=models, generator=failing) as srv:
        _, before = await scrape(srv)
        async with connect(srv.url + "/chat") as ws:
            client = Client(ws)
            await client.hello(user={"external_id": f"fallback-{reason}"})
            await client.send({"type": "message", "id": "m1", "text": "My card was declined"})
            reply = (await client.recv_until("reply"))[-1]
        _, after = await scrape(srv)
    # The composer answered: the customer never sees the model's failure.
    assert reply["text"].strip()
    for each in FALLBACK_MODELS:
        labels = {"reason": each}
        assert value(before, "assistant_llm_fallbacks_total", labels) == 0
        assert value(after, "assistant_llm_fallbacks_total", labels) == (each == reason)
    messages = [r.getMessage() for r in caplog.records]
    assert f"replies are written by {endpoint}" in messages
    fallbacks = [r for r in caplog.records if "fallback" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
    assert getattr(fallbacks[0], "reason", None) == reason
    assert reason in fallbacks[0].getMessage() and endpoint in fallbacks[0].getMessage()
    assert not [m for m in messages if any(secret in m for secret in SECRETS)]
