"""Spoken replies: a pluggable text-to-speech engine and 20 ms telephony framing.

`TextToSpeech` is what a call needs from an engine: `await synthesize(text)` gives float32
mono audio at the engine's rate (or None when there is nothing to say). Synthesis must be
cancellable: barge-in cancels the awaiting task, and an engine that runs a subprocess kills
it then (`EspeakTts` does).

`EspeakTts` runs `espeak-ng --stdout` (text on stdin, so no text is ever read as an option)
and parses the WAV it writes. `select_tts("espeak")` returns it when the binary is on PATH;
otherwise None with one log line, and the call answers as text only.

`mulaw_frames` / `pcm16_frames` cut audio into 20 ms frames for the wire: 160 bytes of G.711
mu-law at 8 kHz (Twilio's `media` payload), or 16-bit PCM at the native client's rate; the
last frame is padded with silence.

Nothing here runs at import; torch stays in `fusion` (resampling goes through fusion.audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import struct
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fusion.audio import mulaw_encode, pcm16_encode, resample

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

FRAME_MS: Final = 20
MULAW_RATE: Final = 8000
MULAW_FRAME_BYTES: Final = MULAW_RATE * FRAME_MS // 1000  # 160
MULAW_SILENCE: Final = 0xFF  # G.711 mu-law code of 0 (positive zero)
DISABLED_NAMES: Final = frozenset({"none", "off", "text"})
ESPEAK_NAMES: Final = frozenset({"espeak", "espeak-ng"})
KILL_TIMEOUT_S: Final = 5.0


class TtsError(RuntimeError):
    """The engine ran but gave no usable audio (bad exit status, unreadable output)."""


@dataclass(frozen=True, slots=True, eq=False)
class Synthesis:
    audio: FloatArray = field(repr=False)  # float32 mono in [-1, 1]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return float(self.audio.shape[0] / self.sample_rate)


@runtime_checkable
class TextToSpeech(Protocol):
    name: str

    async def synthesize(self, text: str) -> Synthesis | None:
        """Audio for `text`; None when there is nothing to say. Cancellable."""
        ...


@dataclass(frozen=True, slots=True)
class EspeakConfig:
    binary: str = "espeak-ng"
    voice: str = "en-us"  # espeak-ng voice, optionally +variant ("en+m7")
    rate_wpm: int = 160
    pitch: int = 50  # 0..99
    max_chars: int = 1200  # longer text is cut at a sentence end before this
    timeout_s: float = 20.0


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _speakable(text: str, max_chars: int) -> str:
    text = _CONTROL.sub(" ", text).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return (cut[: end + 1] if end > 0 else cut).strip()


def parse_wav(data: bytes) -> tuple[FloatArray, int]:
    """16-bit PCM WAV bytes to (float32 mono, rate).

    Tolerates the header of a streamed WAV: espeak-ng writes it before it knows the length, so
    the RIFF and data sizes it declares are placeholders (0x7ffff000) larger than the data.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsError("output is not a RIFF/WAVE file")
    try:
        return _parse_chunks(data)
    except struct.error as exc:
        raise TtsError(f"truncated WAV: {exc}") from None


def _parse_chunks(data: bytes) -> tuple[FloatArray, int]:
    pos = 12
    channels = rate = bits = 0
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt != 1 or bits != 16 or channels < 1:
                raise TtsError(f"unsupported WAV format {fmt}, {bits} bits, {channels} channels")
        elif chunk_id == b"data":
            if not rate:
                raise TtsError("WAV data before its fmt chunk")
            payload = data[body : body + min(size, len(data) - body)]
            usable = len(payload) - len(payload) % (2 * channels)
            samples = np.frombuffer(payload[:usable], dtype="<i2").astype(np.float32) / 32768.0
            if channels > 1:
                samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
            return np.ascontiguousarray(samples, dtype=np.float32), rate
        pos = body + size + (size & 1)
    raise TtsError("WAV has no data chunk")


class EspeakTts:
    """espeak-ng in a subprocess per utterance; cancelling `synthesize` kills the process."""

    name = "espeak-ng"

    def __init__(self, config: EspeakConfig | None = None) -> None:
        self.config = config or EspeakConfig()
        self._running: dict[int, asyncio.subprocess.Process] = {}

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the process and reap it. A cancelled `communicate` leaves the output unread:
        with more than the reader's limit buffered, asyncio has paused the pipe and would
        never see its end, so `wait()` would never return (it hung barge-ins under load).
        Reading the rest (the process is dead: at most a pipe's worth) lets it finish."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            async with asyncio.timeout(KILL_TIMEOUT_S):
                await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
                await proc.wait()
        except TimeoutError:
            log.warning("%s (pid %d) did not exit after SIGKILL", self.config.binary, proc.pid)

    @property
    def running_pids(self) -> frozenset[int]:
        """Process ids of syntheses in progress."""
        return frozenset(self._running)

    async def synthesize(self, text: str) -> Synthesis | None:
        cfg = self.config
        speakable = _speakable(text, cfg.max_chars)
        if not speakable:
            return None
        proc = await asyncio.create_subprocess_exec(
            cfg.binary,
            "--stdout",
            "-v",
            cfg.voice,
            "-s",
            str(cfg.rate_wpm),
            "-p",
            str(cfg.pitch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._running[proc.pid] = proc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(speakable.encode("utf-8")), cfg.timeout_s
            )
        except BaseException:
            # Cancelled (barge-in), timed out or failed: never leave espeak-ng running. The
            # clean-up is shielded so that a second cancellation cannot cut it short.
            await asyncio.shield(self._kill(proc))
            raise
        finally:
            self._running.pop(proc.pid, None)
        if proc.returncode != 0:
            message = err.decode("utf-8", "replace").strip()[:200]
            raise TtsError(f"{cfg.binary} exited with {proc.returncode}: {message}")
        audio, rate = parse_wav(out)
        if audio.size == 0:
            return None
        return Synthesis(audio, rate)


async def _drain(stream: asyncio.StreamReader | None) -> None:
    if stream is not None:
        while await stream.read(1 << 16):
            pass


def select_tts(
    name: str = "espeak", *, binary: str = "espeak-ng", voice: str = "en-us", rate_wpm: int = 160
) -> TextToSpeech | None:
    """The configured engine, or None (replies as text only) with one log line saying why.

    `name`: "espeak" / "espeak-ng" (default; needs the binary on PATH), or "none" / "off" /
    "text" for text-only replies. Any other name is a configuration error (ValueError).
    """
    key = name.strip().lower()
    if key in DISABLED_NAMES:
        log.info("text-to-speech disabled (%s): voice calls get replies as text only", name)
        return None
    if key not in ESPEAK_NAMES:
        raise ValueError(f"unknown text-to-speech engine {name!r}; expected espeak or none")
    path = shutil.which(binary)
    if path is None:
        log.warning(
            "text-to-speech unavailable: %r is not on PATH, so voice calls get replies as "
            "text only (install espeak-ng to speak them)",
            binary,
        )
        return None
    return EspeakTts(EspeakConfig(binary=path, voice=voice, rate_wpm=rate_wpm))


def _frames(data: bytes, size: int, pad: int) -> list[bytes]:
    if not data:
        return []
    remainder = len(data) % size
    if remainder:
        data += bytes([pad]) * (size - remainder)
    return [data[i : i + size] for i in range(0, len(data), size)]


def mulaw_frames(audio: npt.ArrayLike, sample_rate: int) -> list[bytes]:
    """Audio at `sample_rate` as 20 ms G.711 mu-law frames at 8 kHz: 160 bytes each, the last
    one padded with mu-law silence (0xFF). Twilio `media` payloads are these, base64."""
    x = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, MULAW_RATE)
    return _frames(mulaw_encode(x).tobytes(), MULAW_FRAME_BYTES, MULAW_SILENCE)


def pcm16_frames(audio: npt.ArrayLike, sample_rate: int, out_rate: int) -> list[bytes]:
    """Audio at `sample_rate` as 20 ms little-endian 16-bit PCM frames at `out_rate`
    (2 * out_rate / 50 bytes each), the last one padded with zeros."""
    if out_rate % 50:
        raise ValueError(f"out_rate {out_rate} has no whole number of samples in 20 ms")
    x = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, out_rate)
    return _frames(pcm16_encode(x), 2 * out_rate * FRAME_MS // 1000, 0)
