"""Which chat model writes replies, and its limits: one frozen dataclass read from the environment.

| variable | default | meaning |
| --- | --- | --- |
| ASSISTANT_LLM | none | none (grounded composer), openai (OpenAI-compatible), transformers |
| ASSISTANT_LLM_MODEL | | model name sent to the endpoint (required for openai) |
| ASSISTANT_LLM_BASE_URL | | endpoint root, e.g. http://127.0.0.1:8000/v1 for vLLM |
| ASSISTANT_LLM_API_KEY | | the endpoint's key; local servers accept any value |
| ASSISTANT_LLM_TIMEOUT_S | 10 | seconds to the first streamed piece and between pieces |
| ASSISTANT_LLM_TOTAL_TIMEOUT_S | 60 | seconds for a whole reply |
| ASSISTANT_LLM_MAX_TOKENS | 300 | longest reply, in tokens |
| ASSISTANT_LLM_TEMPERATURE | 0.2 | sampling temperature |
| ASSISTANT_LLM_DIR | | local model folder for transformers (required for transformers) |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from assistant.core.settings import SettingsError

LlmKind = Literal["none", "openai", "transformers"]
LLM_KINDS: tuple[LlmKind, ...] = ("none", "openai", "transformers")
# OpenAI's client insists on a key; vLLM, Ollama and llama.cpp servers accept any string.
PLACEHOLDER_API_KEY = "not-needed"


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    llm: LlmKind = "none"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: never in logs
    timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    max_tokens: int = 300
    temperature: float = 0.2
    local_model_dir: str | None = None
    # Retries multiply the wait before the fallback; the composer is the retry.
    max_retries: int = 0
    # Conversation turns and passages that go into a prompt.
    window_turns: int = 6
    passages: int = 3

    def __post_init__(self) -> None:
        if self.llm not in LLM_KINDS:
            raise SettingsError(f"ASSISTANT_LLM={self.llm!r}: expected one of {LLM_KINDS}")
        if self.llm == "openai" and not self.model:
            raise SettingsError("ASSISTANT_LLM=openai needs ASSISTANT_LLM_MODEL")
        if self.llm == "transformers":
            if not self.local_model_dir:
                raise SettingsError("ASSISTANT_LLM=transformers needs ASSISTANT_LLM_DIR")
            if not Path(self.local_model_dir).is_dir():
                raise SettingsError(f"ASSISTANT_LLM_DIR={self.local_model_dir!r} is not a folder")
        for name in ("timeout_s", "total_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number of seconds")
        if self.max_tokens < 1:
            raise SettingsError("ASSISTANT_LLM_MAX_TOKENS must be at least 1")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise SettingsError("ASSISTANT_LLM_TEMPERATURE must lie in [0, 2]")
        if self.window_turns < 0 or self.passages < 1 or self.max_retries < 0:
            raise SettingsError("window_turns >= 0, passages >= 1 and max_retries >= 0")

    @property
    def uses_model(self) -> bool:
        return self.llm != "none"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GenerationConfig:
        source = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = source.get(f"ASSISTANT_LLM{name}")
            return value.strip() if value and value.strip() else None

        def number(name: str, default: float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"ASSISTANT_LLM{name}={raw!r} is not a number") from None

        def whole(name: str, default: int) -> int:
            value = float(number(name, default))
            if not value.is_integer():
                raise SettingsError(f"ASSISTANT_LLM{name} must be a whole number")
            return int(value)

        defaults = cls()
        llm = (get("") or "none").lower()
        if llm not in LLM_KINDS:
            raise SettingsError(f"ASSISTANT_LLM={llm!r}: expected one of {LLM_KINDS}")
        return cls(
            llm=llm,
            model=get("_MODEL"),
            base_url=get("_BASE_URL"),
            api_key=get("_API_KEY"),
            timeout_s=number("_TIMEOUT_S", defaults.timeout_s),
            total_timeout_s=number("_TOTAL_TIMEOUT_S", defaults.total_timeout_s),
            max_tokens=whole("_MAX_TOKENS", defaults.max_tokens),
            temperature=number("_TEMPERATURE", defaults.temperature),
            local_model_dir=get("_DIR"),
        )
