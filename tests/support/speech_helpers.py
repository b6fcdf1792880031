"""Caller speech for the voice tests: espeak-ng utterances through the telephone network.

A caller's audio reaches the server as Twilio does it: 8 kHz G.711 mu-law in 20 ms frames;
the server decodes each frame and resamples it to 16 kHz with a `StreamResampler`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from assistant.voice.synthesis import mulaw_frames, parse_wav
from fusion.audio import StreamResampler, mulaw_decode, resample

FloatArray = npt.NDArray[np.float32]

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (scripts/test.sh and CI install it)"
)


def ravdess_dir() -> Path:
    """The shared RAVDESS folder (ASSISTANT_DATA_DIR, which CI sets); skips the test without it."""
    root = os.environ.get("ASSISTANT_DATA_DIR")
    if not root:
        pytest.skip("ASSISTANT_DATA_DIR is unset: no RAVDESS to featurize")
    data_dir = Path(root) / "ravdess_speech_16k_flac"
    if not (data_dir / "labels.csv").exists():
        pytest.skip(f"{data_dir} holds no RAVDESS labels.csv")
    return data_dir


# The espeak-ng voice Whisper tiny.en understands best through the telephone band (of the
# voices and variants measured; see fusion/asr.py).
CALLER_VOICE = "en+m7"
CALLER_RATE = 150


def espeak(text: str, voice: str = CALLER_VOICE, rate: int = CALLER_RATE) -> tuple[FloatArray, int]:
    """espeak-ng's rendering of `text` (float32 mono, its own rate: 22050 Hz)."""
    assert ESPEAK is not None
    out = subprocess.run(
        [ESPEAK, "--stdout", "-v", voice, "-s", str(rate)],
        input=text.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return parse_wav(out)


def speech_bounds(wave: FloatArray, rate: int, below_peak_db: float = 35.0) -> tuple[float, float]:
    """First and last 10 ms frame louder than `below_peak_db` under the loudest: the real
    onset and end of the speech in `wave`, in seconds."""
    frame = rate // 100
    n = wave.shape[0] // frame
    rms = np.sqrt(np.mean(wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    db = 20 * np.log10(rms + 1e-9)
    active = np.flatnonzero(db > db.max() - below_peak_db)
    return float(active[0] * frame / rate), float((active[-1] + 1) * frame / rate)


def at_8k(wave: FloatArray, rate: int) -> FloatArray:
    return resample(wave, rate, 8000)


def telephone(wave_8k: FloatArray) -> list[bytes]:
    """8 kHz audio as the 160-byte mu-law frames a Twilio call carries."""
    return mulaw_frames(wave_8k, 8000)


def server_side(frames: list[bytes]) -> list[FloatArray]:
    """What the server feeds its VAD: each frame decoded and resampled to 16 kHz in stream."""
    stream = StreamResampler(8000, 16000)
    chunks = [stream.process(mulaw_decode(np.frombuffer(f, dtype=np.uint8))) for f in frames]
    chunks.append(stream.flush())
    return chunks


def caller_16k(text: str, trim: bool = False) -> FloatArray:
    """One utterance as the server hears it: espeak-ng -> 8 kHz mu-law -> 16 kHz; `trim`
    cuts espeak-ng's leading and trailing silence."""
    wave, rate = espeak(text)
    if trim:
        on, end = speech_bounds(wave, rate)
        wave = wave[int(on * rate) : int(end * rate)]
    return np.concatenate(server_side(telephone(at_8k(wave, rate))))


def noise(seconds: float, rate: int, level: float, seed: int = 0) -> FloatArray:
    """White noise at RMS `level` (0.003 is about -50 dBFS: a quiet line)."""
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * rate))).astype(np.float32)
