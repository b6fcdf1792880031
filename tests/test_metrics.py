"""GET /metrics from a real server, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from server import RunningServer
from tests.conftest import ClientFactory, ServerFactory

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
