"""Response generation for one turn: retrieve, plan, then write with the chat model or composer.

    generator = ResponseGenerator.from_config(GenerationConfig.from_env(), embed)
    reply = generator.stream(request)
    async for piece in reply:          # reply.delta frames
        ...
    reply.result.text                  # the reply frame; equals the pieces joined

With no chat model (ASSISTANT_LLM=none) the composer writes the reply. With one, the LCEL
chain streams it; if the model fails, times out (`timeout_s` to the first piece and between
pieces, `total_timeout_s` in all), says nothing, or states an amount, date or merchant that
the conversation does not hold (`assistant.replies.grounding`, checked sentence by sentence
before it is sent), the composer's reply is used instead: the failure is logged and counted,
never shown to the customer. A model that fails after it has streamed part of a reply is
followed by a paragraph break and the composer's reply, so that the pieces still join to the
reply's full text, as the protocol promises. The handoff notice is always the composer's: it
must not answer the question it hands to a person.

Privacy: the utterance and window are redacted here again before any prompt, a request's
profile summary must belong to the request's user, and the chain keeps no state between
requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

from assistant.core.redaction import redact
from assistant.replies.composer import DEFAULT_POLICY, ComposerPolicy, ReplyKind, ReplyPlan, compose
from assistant.replies.deltas import sentence_chunks
from assistant.replies.details import Details, merge
from assistant.replies.grounding import Grounds, SentenceGate
from assistant.replies.knowledge_base import KnowledgeBase, load_knowledge_base
from assistant.replies.llm_backends import LocalLoader, build_chat_model
from assistant.replies.llm_config import GenerationConfig
from assistant.replies.profile_summary import ProfileSummary
from assistant.replies.prompting import ChainInput, ConversationTurn, build_reply_chain
from assistant.replies.retrieval import (
    Embed,
    EmbeddingCache,
    KnowledgeRetriever,
    Passage,
    build_retriever,
    passage_text,
)
from assistant.replies.understanding import Understanding

log = logging.getLogger(__name__)

PARAGRAPH = "\n\n"


class ReplySource(StrEnum):
    COMPOSER = "composer"
    MODEL = "model"


class FallbackReason(StrEnum):
    TIMEOUT = "timeout"
    ERROR = "error"
    EMPTY = "empty"
    UNGROUNDED = "ungrounded"  # it stated a detail the conversation does not hold


# Where ChatOpenAI sends requests when neither the settings nor OPENAI_BASE_URL name a server.
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


def _public_url(url: str) -> str:
    """`url` without what may be secret in it: user and password, query and fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe_model(config: GenerationConfig, chat_model: BaseChatModel | None) -> str:
    """Who writes the replies, for the log: the LLM mode, its model and endpoint; never the
    API key."""
    if chat_model is None:
        return "the composer (ASSISTANT_LLM=none)"
    if config.llm == "openai":
        # ChatOpenAI resolves the endpoint itself (OPENAI_BASE_URL when base_url is unset).
        base = config.base_url or getattr(chat_model, "openai_api_base", None)
        return f"openai model {config.model} at {_public_url(base or OPENAI_DEFAULT_URL)}"
    if config.llm == "transformers":
        return f"transformers model in {config.local_model_dir}"
    return f"chat model {type(chat_model).__name__}"


def _is_timeout(exc: BaseException) -> bool:
    """Client libraries time out with their own classes (openai.APITimeoutError,
    httpx.ReadTimeout), none of them a TimeoutError: recognise them by name."""
    return any("Timeout" in cls.__name__ for cls in type(exc).__mro__)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One user turn to answer. `handoff`: the policy hands this turn to a person;
    `near_handoff`: one more not-understood turn would (the reply then offers a person);
    `channel`: chat, or voice for a phone call (whose reply is spoken); `details`: what is
    known of the thing in question (assistant.replies.details), which the reply names."""

    user_id: str
    utterance: str
    understanding: Understanding = field(default_factory=Understanding)
    profile: ProfileSummary | None = None
    window: tuple[ConversationTurn, ...] = ()
    handoff: bool = False
    near_handoff: bool = False
    channel: str = "chat"
    details: Details = field(default_factory=Details)
    # The utterance's embedding when the caller already has it (saves an encoder run).
    query_vector: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if self.profile is not None and self.profile.user_id != self.user_id:
            raise ValueError("the profile summary belongs to another user")


@dataclass(frozen=True, slots=True)
class GeneratedReply:
    text: str
    source: ReplySource
    plan: ReplyPlan
    passages: tuple[Passage, ...]
    fallback_reason: FallbackReason | None = None

    @property
    def fallback_used(self) -> bool:
        return self.fallback_reason is not None


@dataclass(slots=True)
class GenerationStats:
    """Counters since start; `snapshot` for metrics."""

    replies: int = 0
    model_replies: int = 0
    composer_replies: int = 0
    fallbacks: int = 0
    fallback_timeouts: int = 0
    fallback_errors: int = 0
    fallback_empty: int = 0
    fallback_ungrounded: int = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def fallbacks_by_reason(self) -> dict[str, int]:
        return {
            FallbackReason.TIMEOUT.value: self.fallback_timeouts,
            FallbackReason.ERROR.value: self.fallback_errors,
            FallbackReason.EMPTY.value: self.fallback_empty,
            FallbackReason.UNGROUNDED.value: self.fallback_ungrounded,
        }


class ReplyStream:
    """The pieces of one reply (iterate once), then `result`."""

    def __init__(self, pieces: AsyncIterator[str], done: asyncio.Future[GeneratedReply]) -> None:
        self._pieces = pieces
        self._done = done

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces

    @property
    def result(self) -> GeneratedReply:
        if not self._done.done():
            raise RuntimeError("the reply has not been streamed to the end yet")
        return self._done.result()


class ResponseGenerator:
    """Shared by all sessions; holds no per-user state."""

    def __init__(
        self,
        kb: KnowledgeBase,
        retriever: KnowledgeRetriever,
        *,
        config: GenerationConfig | None = None,
        chat_model: BaseChatModel | None = None,
        policy: ComposerPolicy = DEFAULT_POLICY,
    ) -> None:
        self.kb = kb
        self.retriever = retriever
        self.config = config or GenerationConfig()
        self.policy = policy
        self.chat_model = chat_model
        self._chain: Runnable[ChainInput, str] | None = (
            build_reply_chain(chat_model) if chat_model is not None else None
        )
        self.stats = GenerationStats()
        # For the log: at start, and with every fallback.
        self.model_description = describe_model(self.config, chat_model)

    @classmethod
    def from_config(
        cls,
        config: GenerationConfig,
        embed: Embed,
        *,
        kb: KnowledgeBase | None = None,
        retriever: KnowledgeRetriever | None = None,
        local_loader: LocalLoader | None = None,
        cache: EmbeddingCache | None = None,
    ) -> ResponseGenerator:
        """Load the knowledge base, embed it (blocking, a few seconds on a CPU, unless
        `cache` has its vectors) and build the configured chat model; pass `kb` and
        `retriever` to reuse loaded ones."""
        kb = kb or load_knowledge_base()
        retriever = retriever or build_retriever(kb, embed, k=config.passages, cache=cache)
        model = build_chat_model(config, local_loader=local_loader)
        return cls(kb, retriever, config=config, chat_model=model)

    @property
    def uses_model(self) -> bool:
        return self._chain is not None

    async def retrieve(self, request: GenerationRequest) -> list[Passage]:
        """The best passages for the turn, weighted by its intent; the encoder runs in a
        worker thread when the request brings no embedding."""
        utterance = redact(request.utterance)
        if request.query_vector is not None:
            return self.retriever.passages(
                utterance,
                understanding=request.understanding,
                query_vector=request.query_vector,
            )
        return await asyncio.to_thread(
            self.retriever.passages, utterance, understanding=request.understanding
        )

    def stream(self, request: GenerationRequest) -> ReplyStream:
        done: asyncio.Future[GeneratedReply] = asyncio.get_running_loop().create_future()
        return ReplyStream(self._run(request, done), done)

    async def generate(self, request: GenerationRequest) -> GeneratedReply:
        reply = self.stream(request)
        async for _ in reply:
            pass
        return reply.result

    def _count(self, source: ReplySource, reason: FallbackReason | None) -> None:
        stats = self.stats
        stats.replies += 1
        if source is ReplySource.MODEL:
            stats.model_replies += 1
        else:
            stats.composer_replies += 1
        if reason is not None:
            stats.fallbacks += 1
            if reason is FallbackReason.TIMEOUT:
                stats.fallback_timeouts += 1
            elif reason is FallbackReason.ERROR:
                stats.fallback_errors += 1
            elif reason is FallbackReason.UNGROUNDED:
                stats.fallback_ungrounded += 1
            else:
                stats.fallback_empty += 1

    async def _run(
        self, request: GenerationRequest, done: asyncio.Future[GeneratedReply]
    ) -> AsyncIterator[str]:
        passages = await self.retrieve(request)
        summary = request.profile or ProfileSummary(user_id=request.user_id)
        plan, composed = compose(
            self.kb,
            request.understanding,
            summary,
            passages,
            handoff=request.handoff,
            near_handoff=request.near_handoff,
            policy=self.policy,
            channel=request.channel,
            details=request.details,
        )
        sent: list[str] = []
        reason: FallbackReason | None = None
        # The handoff notice is policy text: it must not answer the question it hands over.
        chain = self._chain if plan.kind is not ReplyKind.HANDOFF else None
        if chain is not None:
            # What the note on the customer's behaviour names is known too.
            noted = plan.note.details if plan.note is not None else Details()
            inputs = ChainInput(
                utterance=redact(request.utterance),
                understanding=request.understanding,
                profile=summary,
                window=self._window(request.window),
                passages=self._prompt_passages(plan, passages),
                plan=plan,
                details=merge(noted, request.details),
            )
            gate = SentenceGate(self._grounds(inputs, request.details))
            failure = ""
            try:
                # aclosing: a reply abandoned mid-stream closes the model's stream at once.
                async with contextlib.aclosing(self._model_pieces(chain, inputs)) as pieces:
                    async for piece in pieces:
                        if checked := gate.feed(piece):
                            sent.append(checked)
                            yield checked
                        if gate.failure is not None:
                            break
            except TimeoutError:
                reason = FallbackReason.TIMEOUT
            except Exception as exc:  # any model or transport failure: the composer answers
                reason = FallbackReason.TIMEOUT if _is_timeout(exc) else FallbackReason.ERROR
                # The type only: a model's error text may quote the prompt or its output.
                failure = f" ({type(exc).__name__})"
            # What the model wrote before it stopped goes out, as far as it passes the guard.
            if rest := gate.close():
                sent.append(rest)
                yield rest
            if reason is None and gate.failure is not None:
                reason = FallbackReason.UNGROUNDED
                # The kind only: the detail itself may be personal.
                failure = f" ({gate.failure} not in the conversation)"
            if reason is None and not "".join(sent).strip():
                reason = FallbackReason.EMPTY
            if reason is not None:
                log.warning(
                    "reply model fallback, %s%s: %s; the composer answers instead",
                    reason.value,
                    failure,
                    self.model_description,
                    extra={"reason": reason.value},
                )
        if chain is None or reason is not None:
            lead = PARAGRAPH if "".join(sent).strip() else ""
            chunks = sentence_chunks(composed)
            if lead:
                chunks[0] = lead + chunks[0]
            for piece in chunks:
                sent.append(piece)
                yield piece
        source = ReplySource.MODEL if chain is not None and reason is None else ReplySource.COMPOSER
        self._count(source, reason)
        done.set_result(GeneratedReply("".join(sent), source, plan, tuple(passages), reason))

    @staticmethod
    def _grounds(inputs: ChainInput, details: Details) -> Grounds:
        """What the model's reply may state: what its prompt gave it of this conversation."""
        return Grounds.of(
            details=(inputs.details, details),
            texts=(
                inputs.utterance,
                *(turn.text for turn in inputs.window),
                *inputs.profile.lines(),
                *(passage_text(p.entry) for p in inputs.passages),
            ),
        )

    def _window(self, window: Sequence[ConversationTurn]) -> tuple[ConversationTurn, ...]:
        keep = self.config.window_turns
        recent = window[-keep:] if keep else ()
        return tuple(ConversationTurn(t.role, redact(t.text)) for t in recent)

    def _prompt_passages(self, plan: ReplyPlan, passages: Sequence[Passage]) -> tuple[Passage, ...]:
        """The retrieved passages, plus the plan's own entries if retrieval missed them."""
        have = {p.entry.id for p in passages}
        extra = [
            Passage(entry, 0.0, 0.0)
            for entry_id in plan.entry_ids
            if entry_id not in have and (entry := self.kb.get(entry_id)) is not None
        ]
        return (*extra, *passages)

    async def _model_pieces(
        self, chain: Runnable[ChainInput, str], inputs: ChainInput
    ) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.total_timeout_s
        stream = chain.astream(inputs)
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    piece = await asyncio.wait_for(
                        anext(stream), min(self.config.timeout_s, remaining)
                    )
                except StopAsyncIteration:
                    return
                if piece:
                    yield piece
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
