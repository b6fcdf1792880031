"""Settings from the environment (flags override them); one frozen dataclass, read once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from assistant.chat.rate_limits import RateLimits
from assistant.core.settings import SettingsError
from assistant.operators.sign_in_throttle import AuthThrottleConfig
from assistant.replies.dialogue import DialogueConfig
from assistant.replies.llm_config import GenerationConfig
from assistant.voice.turns import CHECK_MS, MAX_SILENCE_MS
from profiles import DEFAULT_DB_URL

Device = Literal["auto", "cpu", "cuda"]
# auto: JSON lines when stderr is not a terminal (services, containers), plain text on one.
LogFormat = Literal["auto", "json", "text"]


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """Voice calls: speech synthesis, recognition and turn taking (ASSISTANT_TTS, _ASR_*,
    _VAD_*, _TURN_*)."""

    tts: str = "espeak"  # espeak | none
    # A faster-whisper (CTranslate2) model folder; unset: the shipped Whisper tiny.en.
    asr_model: str | None = None
    asr_beam: int = 5  # fewer word errors than greedy on short utterances (fusion/asr.py)
    # Utterances transcribed at once across all calls; 0: one per CPU core, at most 4.
    asr_workers: int = 0
    # The silence that ends an utterance in the silence mode (and a pause that the end-of-turn
    # model cannot judge, in the model mode).
    vad_end_silence_ms: int = 500
    vad_max_utterance_s: float = 20.0
    # model: an end-of-turn model judges each pause (assistant/voice/turns.py); silence: only
    # vad_end_silence_ms of silence ends an utterance.
    turn_detection: Literal["model", "silence"] = "silence"
    turn_check_ms: int = CHECK_MS  # silence before the model is asked
    turn_threshold: float = 0.5  # its probability at or above which the turn is over
    turn_max_silence_ms: int = MAX_SILENCE_MS  # the longest wait when it says "not yet"
    # The end-of-turn model's .onnx file; unset: Smart Turn v3.2 from the pipecat-ai wheel.
    turn_model: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    db_url: str = DEFAULT_DB_URL
    redis_url: str | None = None
    # Redis keys and channels start with this, so that deployments can share one Redis.
    redis_prefix: str = "assistant:"
    # This replica's name in Redis; unset: host name, process id and a random suffix.
    replica_id: str | None = None
    # SIGTERM waits this long for turns in flight before closing connections with 1012.
    drain_timeout_s: float = 20.0
    rate: RateLimits = field(default_factory=RateLimits)
    widget_secret: str | None = field(default=None, repr=False)
    # Twilio's auth token: with it, /voice/twilio upgrades must carry Twilio's signature
    # (assistant/voice/twilio_signature.py). A secret: never logged, and left out of repr.
    twilio_auth_token: str | None = field(default=None, repr=False)
    # The server's URL in front of any proxy, as the TwiML names it: wss://host[:port][/prefix].
    # Twilio signs it followed by the request's path; unset, wss:// and the request's Host.
    public_url: str | None = None
    device: Device = "auto"
    # The chat model behind replies (ASSISTANT_LLM and its ASSISTANT_LLM_* settings).
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig.from_env({}))
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    log_level: str = "INFO"
    log_format: LogFormat = "auto"
    # How long a dropped chat session stays resumable with its replay buffer.
    resume_ttl_s: float = 300.0
    replay_frames: int = 2000
    # /chat takes voice notes (ASSISTANT_VOICE_NOTES=on|off), heard by the voice calls'
    # speech models; a note whose next part has not come for note_timeout_s is dropped.
    voice_notes: bool = True
    note_timeout_s: float = 120.0
    # Files the server may recompute, kept between starts (the knowledge base's embeddings);
    # None: none kept.
    cache_dir: str | None = "var/cache"
    batch_size: int = 32
    batch_wait_ms: float = 0.0
    batch_queue: int = 1024
    # CPU threads of a model forward for a lone message; None: half the usable cores.
    lone_threads: int | None = None
    # Turn batches the models run at once; None: two on a CPU with two cores or more.
    batch_workers: int | None = None
    sqlite_synchronous: str = "NORMAL"
    # PostgreSQL connection pool of each replica (SQLite opens connections as needed).
    db_pool_size: int = 10
    db_max_overflow: int = 10
    db_pool_timeout_s: float = 10.0
    db_pool_recycle_s: float = 1800.0
    # Every connection is pinged this often and closed when the pong is this late: peers
    # that vanished (half-open) or stopped reading go. 0 turns pings off.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    # A peer that does not finish the closing handshake is cut off after this.
    close_timeout_s: float = 10.0
    # A connection that has not said hello (or auth, or start) by then is closed with 1008.
    hello_timeout_s: float = 10.0
    # Open WebSockets per client address; more are refused with HTTP 429. 0: no limit.
    max_connections_per_ip: int = 100
    # Frames queued for a client that does not read; one more disconnects it with 1013.
    send_queue: int = 1000
    # WebSocket per-message deflate, when a client offers it: "off" or "deflate".
    ws_compression: Literal["off", "deflate"] = "off"
    # Failed operator sign-ins per client address before a lockout.
    auth: AuthThrottleConfig = field(default_factory=AuthThrottleConfig)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    # Conversations keep a dialogue state (ASSISTANT_DIALOGUE=on|off): follow-ups read within
    # the topic, clarifying questions; off, every message is read alone.
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)

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

        def positive(name: str, default: float, kind: type[int] | type[float]) -> float:
            value = number(name, default, kind)
            if value < 0:
                raise SettingsError(f"ASSISTANT_{name}={value!r} must not be negative")
            return value

        def batch_workers() -> int | None:
            if get("BATCH_WORKERS") is None:
                return None
            value = int(number("BATCH_WORKERS", 0, int))
            if value < 1:
                raise SettingsError(f"ASSISTANT_BATCH_WORKERS={value!r} must be at least 1")
            return value

        def lone_threads() -> int | None:
            if get("LONE_THREADS") is None:
                return None
            value = int(number("LONE_THREADS", 0, int))
            if value < 1:
                raise SettingsError(f"ASSISTANT_LONE_THREADS={value!r} must be at least 1")
            return value

        def auth_throttle() -> AuthThrottleConfig:
            auth = defaults.auth
            try:
                return AuthThrottleConfig(
                    max_failures=int(number("AUTH_MAX_FAILURES", auth.max_failures, int)),
                    window_s=number("AUTH_WINDOW_S", auth.window_s, float),
                    failure_delay_s=number("AUTH_FAILURE_DELAY_S", auth.failure_delay_s, float),
                )
            except ValueError as exc:
                raise SettingsError(f"ASSISTANT_AUTH_*: {exc}") from None

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            raw = (get(name) or default).lower()
            if raw not in allowed:
                raise SettingsError(f"ASSISTANT_{name}={raw!r}: expected one of {allowed}")
            return raw

        def voice() -> VoiceSettings:
            base = defaults.voice
            beam = int(positive("ASR_BEAM", base.asr_beam, int))
            silence = int(positive("VAD_END_SILENCE_MS", base.vad_end_silence_ms, int))
            longest = positive("VAD_MAX_UTTERANCE_S", base.vad_max_utterance_s, float)
            if beam < 1 or silence < 1 or longest <= 0:
                raise SettingsError(
                    "ASSISTANT_ASR_BEAM, ASSISTANT_VAD_END_SILENCE_MS and "
                    "ASSISTANT_VAD_MAX_UTTERANCE_S must be positive"
                )
            check = int(number("TURN_CHECK_MS", base.turn_check_ms, int))
            wait = int(number("TURN_MAX_SILENCE_MS", base.turn_max_silence_ms, int))
            if not 0 < check < wait or wait < 100:
                raise SettingsError(
                    f"ASSISTANT_TURN_CHECK_MS={check} and ASSISTANT_TURN_MAX_SILENCE_MS={wait}: "
                    "need 0 < check < max silence, and a max silence of at least 100 ms"
                )
            threshold = number("TURN_THRESHOLD", base.turn_threshold, float)
            if not 0.0 < threshold < 1.0:
                raise SettingsError(
                    f"ASSISTANT_TURN_THRESHOLD={threshold!r} must lie between 0 and 1"
                )
            return VoiceSettings(
                tts=choice("TTS", base.tts, ("espeak", "none")),
                asr_model=get("ASR_MODEL"),
                asr_beam=beam,
                asr_workers=int(positive("ASR_WORKERS", base.asr_workers, int)),
                vad_end_silence_ms=silence,
                vad_max_utterance_s=longest,
                turn_detection=choice(  # type: ignore[arg-type]
                    "TURN_DETECTION", base.turn_detection, ("model", "silence")
                ),
                turn_check_ms=check,
                turn_threshold=threshold,
                turn_max_silence_ms=wait,
                turn_model=get("TURN_MODEL"),
            )

        def rate_limits() -> RateLimits:
            limits = defaults.rate
            try:
                return RateLimits(
                    window_s=number("RATE_WINDOW_S", limits.window_s, float),
                    per_connection=int(
                        number("RATE_CONNECTION_MESSAGES", limits.per_connection, int)
                    ),
                    per_user=int(number("RATE_USER_MESSAGES", limits.per_user, int)),
                )
            except SettingsError:
                raise
            except ValueError as exc:
                raise SettingsError(f"ASSISTANT_RATE_*: {exc}") from None

        def cache_dir() -> str | None:
            raw = get("CACHE_DIR")
            if raw is None:
                return defaults.cache_dir
            return None if raw.lower() == "none" else raw

        def public_url() -> str | None:
            raw = get("PUBLIC_URL")
            if raw is None:
                return None
            parts = urlsplit(raw)
            usable = parts.scheme in ("ws", "wss") and parts.hostname
            if not usable or parts.query or parts.fragment:
                raise SettingsError(
                    f"ASSISTANT_PUBLIC_URL={raw!r}: expected wss://host[:port][/prefix]"
                )
            return raw

        defaults = cls()
        origins = tuple(o.strip() for o in (get("ALLOWED_ORIGINS") or "").split(",") if o.strip())
        return cls(
            host=get("HOST") or defaults.host,
            port=int(number("PORT", defaults.port, int)),
            db_url=get("DB_URL") or DEFAULT_DB_URL,
            redis_url=get("REDIS_URL"),
            redis_prefix=get("REDIS_PREFIX") or defaults.redis_prefix,
            replica_id=get("REPLICA_ID"),
            drain_timeout_s=number("DRAIN_TIMEOUT_S", defaults.drain_timeout_s, float),
            rate=rate_limits(),
            widget_secret=get("WIDGET_SECRET"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            public_url=public_url(),
            device=choice("DEVICE", "auto", ("auto", "cpu", "cuda")),  # type: ignore[arg-type]
            generation=GenerationConfig.from_env(source),
            allowed_origins=origins,
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
            log_format=choice("LOG_FORMAT", "auto", ("auto", "json", "text")),  # type: ignore[arg-type]
            resume_ttl_s=number("RESUME_TTL_S", defaults.resume_ttl_s, float),
            replay_frames=int(number("REPLAY_FRAMES", defaults.replay_frames, int)),
            voice_notes=choice("VOICE_NOTES", "on", ("on", "off")) == "on",
            note_timeout_s=positive("NOTE_TIMEOUT_S", defaults.note_timeout_s, float),
            cache_dir=cache_dir(),
            batch_size=int(number("BATCH_SIZE", defaults.batch_size, int)),
            batch_wait_ms=number("BATCH_WAIT_MS", defaults.batch_wait_ms, float),
            batch_queue=int(number("BATCH_QUEUE", defaults.batch_queue, int)),
            lone_threads=lone_threads(),
            batch_workers=batch_workers(),
            sqlite_synchronous=choice(
                "SQLITE_SYNCHRONOUS", "normal", ("off", "normal", "full", "extra")
            ).upper(),
            db_pool_size=int(number("DB_POOL_SIZE", defaults.db_pool_size, int)),
            db_max_overflow=int(number("DB_MAX_OVERFLOW", defaults.db_max_overflow, int)),
            db_pool_timeout_s=number("DB_POOL_TIMEOUT_S", defaults.db_pool_timeout_s, float),
            db_pool_recycle_s=number("DB_POOL_RECYCLE_S", defaults.db_pool_recycle_s, float),
            ping_interval_s=positive("PING_INTERVAL_S", defaults.ping_interval_s, float),
            ping_timeout_s=positive("PING_TIMEOUT_S", defaults.ping_timeout_s, float),
            close_timeout_s=positive("CLOSE_TIMEOUT_S", defaults.close_timeout_s, float),
            hello_timeout_s=positive("HELLO_TIMEOUT_S", defaults.hello_timeout_s, float),
            max_connections_per_ip=int(
                positive("MAX_CONNECTIONS_PER_IP", defaults.max_connections_per_ip, int)
            ),
            send_queue=int(positive("SEND_QUEUE", defaults.send_queue, int)),
            ws_compression=choice("WS_COMPRESSION", "off", ("off", "deflate")),  # type: ignore[arg-type]
            auth=auth_throttle(),
            voice=voice(),
            dialogue=DialogueConfig(enabled=choice("DIALOGUE", "on", ("on", "off")) == "on"),
        )
