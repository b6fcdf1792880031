"""The chat model that writes replies, chosen by GenerationConfig; None means the composer.

- `openai`: any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp server, OpenAI itself)
  through LangChain's `ChatOpenAI`, streaming.
- `transformers`: a local model folder. Torch stays in fusion, so this package only adapts:
  `LocalChatModel` is a LangChain chat model over any `TextGenerator` (a plain object that
  streams text pieces for a list of `(role, text)` messages), and the composition root
  passes a loader that builds one from the folder (fusion's causal-LM wrapper).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, SecretStr

from assistant.core.settings import SettingsError
from assistant.replies.llm_config import PLACEHOLDER_API_KEY, GenerationConfig


class TextGenerator(Protocol):
    """Streams a reply to chat messages `(role, text)`, role in system | user | assistant."""

    def stream(
        self, messages: Sequence[tuple[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]: ...


LocalLoader = Callable[[str], TextGenerator]


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    raise ValueError(f"a local model takes system, human and AI messages, not {message.type}")


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over a local TextGenerator.

    LangChain runs `_stream` in a worker thread for async callers, so generation never
    blocks the event loop.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any  # a TextGenerator; pydantic cannot validate a Protocol
    max_new_tokens: int = 300
    temperature: float = 0.2

    @property
    def _llm_type(self) -> str:
        return "local-text-generator"

    def _pieces(self, messages: list[BaseMessage]) -> Iterator[str]:
        plain = [(_role(m), m.text) for m in messages]
        generator: TextGenerator = self.generator
        return generator.stream(
            plain, max_new_tokens=self.max_new_tokens, temperature=self.temperature
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(self._pieces(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        produced = False
        for piece in self._pieces(messages):
            produced = True
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        if not produced:
            # LangChain refuses a stream without chunks; an empty reply is the caller's call.
            yield ChatGenerationChunk(message=AIMessageChunk(content=""))


def openai_chat_model(config: GenerationConfig) -> BaseChatModel:
    """LangChain's OpenAI chat model for `config`, streaming, without client retries."""
    from langchain_openai import ChatOpenAI  # only this backend needs the package loaded

    key = config.api_key or (PLACEHOLDER_API_KEY if config.base_url else None)
    return ChatOpenAI(
        model=config.model or "",
        base_url=config.base_url,
        api_key=SecretStr(key) if key else None,
        # A safety net for a hung socket; the generator's own deadlines, shorter, act first
        # and are counted as timeouts.
        timeout=config.timeout_s * 2,
        max_retries=config.max_retries,
        max_completion_tokens=config.max_tokens,
        temperature=config.temperature,
        streaming=True,
        # ChatOpenAI sends the limit as max_completion_tokens; llama.cpp servers and older
        # Ollama read only max_tokens, so self-hosted endpoints get both.
        extra_body={"max_tokens": config.max_tokens} if config.base_url else None,
    )


def build_chat_model(
    config: GenerationConfig, *, local_loader: LocalLoader | None = None
) -> BaseChatModel | None:
    """The configured chat model, or None for the composer (ASSISTANT_LLM=none)."""
    if config.llm == "none":
        return None
    if config.llm == "openai":
        return openai_chat_model(config)
    if local_loader is None or config.local_model_dir is None:
        raise SettingsError("ASSISTANT_LLM=transformers needs a local model loader and folder")
    return LocalChatModel(
        generator=local_loader(config.local_model_dir),
        max_new_tokens=config.max_tokens,
        temperature=config.temperature,
    )
