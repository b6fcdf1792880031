"""What the emotion head hears in a call: the recognizer's encoder mean and the prosody, and the
telephone path its training copies go through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion.asr import AsrConfig, SpeechRecognizer
from fusion.device import select_device
from fusion.prosody import PROSODY_DIM
from fusion.speech import SPEECH_DIM, SpeechFeaturizer
from fusion.training.ravdess import ravdess_voice_features
from fusion.voice_emotion import (
    ENCODER_DIM,
    VOICE_EMOTION_DIM,
    telephone_copy,
    voice_emotion_vector,
)
from tests.support.speech_helpers import caller_16k, needs_espeak, ravdess_dir


def _tone(hz: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x[2000:-2000]))))


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer(AsrConfig(workers=1))


def test_the_vector_is_the_encoder_mean_then_the_prosody() -> None:
    encoded = np.arange(ENCODER_DIM, dtype=np.float32)
    speech = -np.arange(SPEECH_DIM, dtype=np.float32)
    vector = voice_emotion_vector(encoded, speech)
    assert vector is not None and vector.shape == (VOICE_EMOTION_DIM,)
    assert vector.dtype == np.float32
    assert np.array_equal(vector[:ENCODER_DIM], encoded)
    assert np.array_equal(vector[ENCODER_DIM:], speech[-PROSODY_DIM:])


def test_a_missing_part_gives_no_vector_and_a_wrong_size_is_refused() -> None:
    assert voice_emotion_vector(None, np.zeros(SPEECH_DIM)) is None
    assert voice_emotion_vector(np.zeros(ENCODER_DIM), None) is None
    with pytest.raises(ValueError, match="encoder mean"):
        voice_emotion_vector(np.zeros(ENCODER_DIM + 1), np.zeros(SPEECH_DIM))
    with pytest.raises(ValueError, match="speech features"):
        voice_emotion_vector(np.zeros(ENCODER_DIM), np.zeros(8))


def test_the_telephone_copy_keeps_the_voice_band_and_drops_what_is_above_it() -> None:
    low, high = _tone(1000.0), _tone(6000.0)
    low_out, high_out = telephone_copy(low), telephone_copy(high)
    assert low_out.shape == low.shape and low_out.dtype == np.float32
    assert _rms(low_out) == pytest.approx(_rms(low), rel=0.05)
    assert _rms(high_out) < 0.01 * _rms(high)


@needs_espeak
def test_transcripts_carry_the_encoder_mean_of_their_audio(recognizer: SpeechRecognizer) -> None:
    audio = caller_16k("I have been waiting three weeks for my card and nobody helps me")
    transcript = recognizer.transcribe_sync(audio)
    mean = transcript.encoder_mean
    assert mean is not None and mean.shape == (ENCODER_DIM,) and mean.dtype == np.float32
    assert np.all(np.isfinite(mean)) and float(np.abs(mean).max()) > 0.0
    # The same states without the decoder.
    alone = recognizer.encoder_mean(audio)
    assert alone is not None and np.allclose(alone, mean, atol=1e-6)
    other = recognizer.encoder_mean(caller_16k("thank you, that was quick"))
    assert other is not None and not np.allclose(other, mean, atol=1e-3)
    # Shorter than one feature hop: no frame to average.
    assert recognizer.encoder_mean(np.zeros(100, np.float32)) is None
    assert recognizer.transcribe_sync(np.zeros(100, np.float32)).encoder_mean is None


async def test_the_pool_hands_the_encoder_mean_on(recognizer: SpeechRecognizer) -> None:
    audio = _tone(220.0, 1.5) * np.linspace(0.2, 1.0, 24000, dtype=np.float32)
    recognizer.start()
    try:
        pooled = await recognizer.transcribe(audio)
    finally:
        await recognizer.stop()
    direct = recognizer.encoder_mean(audio)
    assert pooled.encoder_mean is not None and direct is not None
    assert np.allclose(pooled.encoder_mean, direct, atol=1e-6)


def test_ravdess_features_for_the_emotion_head(
    recognizer: SpeechRecognizer, tmp_path: Path
) -> None:
    data_dir = ravdess_dir()
    featurizer = SpeechFeaturizer(select_device("cpu"))
    clean = ravdess_voice_features(
        data_dir, recognizer, featurizer, cache_dir=tmp_path, limit=3, progress=False
    )
    phoned = ravdess_voice_features(
        data_dir, recognizer, featurizer, telephone=True, cache_dir=tmp_path, limit=3,
        progress=False,
    )  # fmt: skip
    for x in (clean, phoned):
        assert x.shape == (3, VOICE_EMOTION_DIM) and x.dtype == np.float32
        assert np.all(np.isfinite(x))
    assert not np.allclose(clean, phoned, atol=1e-3)
    cached = sorted(tmp_path.glob("ravdess_voice_*.npz"))
    assert len(cached) == 2
    written = [c.stat().st_mtime_ns for c in cached]
    again = ravdess_voice_features(
        data_dir, recognizer, featurizer, cache_dir=tmp_path, limit=3, progress=False
    )
    assert np.array_equal(again, clean)
    assert [c.stat().st_mtime_ns for c in cached] == written  # read back, not recomputed
