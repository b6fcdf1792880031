"""Settings from the environment (flags override them); one frozen dataclass, read once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from profiles import DEFAULT_DB_URL

if TYPE_CHECKING:
    from assistant.generation_config import GenerationConfig

Device = Literal["auto", "cpu", "cuda"]


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""


def _generation_from(env: Mapping[str, str]) -> GenerationConfig:
    # generation_config imports this module (for SettingsError): import it when first needed.
    from assistant.generation_config import GenerationConfig

    return GenerationConfig.from_env(env)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    db_url: str = DEFAULT_DB_URL
    redis_url: str | None = None
    widget_secret: str | None = None
    device: Device = "auto"
    # The chat model behind replies (ASSISTANT_LLM and its ASSISTANT_LLM_* settings).
    generation: GenerationConfig = field(default_factory=lambda: _generation_from({}))
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    log_level: str = "INFO"
    # How long a dropped chat session stays resumable with its replay buffer.
    resume_ttl_s: float = 300.0
    replay_frames: int = 2000
    batch_size: int = 32
    batch_wait_ms: float = 0.0
    batch_queue: int = 1024
    sqlite_synchronous: str = "NORMAL"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = source.get(f"ASSISTANT_{name}")
            return value if value not in (None, "") else None

        def number(name: str, default: float, kind: type[int] | type[float]) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"ASSISTANT_{name}={raw!r} is not a number") from None

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            raw = (get(name) or default).lower()
            if raw not in allowed:
                raise SettingsError(f"ASSISTANT_{name}={raw!r}: expected one of {allowed}")
            return raw

        defaults = cls()
        origins = tuple(o.strip() for o in (get("ALLOWED_ORIGINS") or "").split(",") if o.strip())
        return cls(
            host=get("HOST") or defaults.host,
            port=int(number("PORT", defaults.port, int)),
            db_url=get("DB_URL") or DEFAULT_DB_URL,
            redis_url=get("REDIS_URL"),
            widget_secret=get("WIDGET_SECRET"),
            device=choice("DEVICE", "auto", ("auto", "cpu", "cuda")),  # type: ignore[arg-type]
            generation=_generation_from(source),
            allowed_origins=origins,
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
            resume_ttl_s=number("RESUME_TTL_S", defaults.resume_ttl_s, float),
            replay_frames=int(number("REPLAY_FRAMES", defaults.replay_frames, int)),
            batch_size=int(number("BATCH_SIZE", defaults.batch_size, int)),
            batch_wait_ms=number("BATCH_WAIT_MS", defaults.batch_wait_ms, float),
            batch_queue=int(number("BATCH_QUEUE", defaults.batch_queue, int)),
            sqlite_synchronous=choice(
                "SQLITE_SYNCHRONOUS", "normal", ("off", "normal", "full", "extra")
            ).upper(),
        )
