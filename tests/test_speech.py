"""Speech side of fusion: decoding, resampling, prosody and the shipped speech encoder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.audio import (
    mulaw_decode,
    mulaw_encode,
    resample_to_16k,
    to_float_mono,
    trim_silence,
)
from fusion.heads.labels import RAVDESS
from fusion.prosody import PROSODY_DIM, PROSODY_NAMES, prosody_features
from fusion.speech import (
    EMBEDDING_DIM,
    SPEECH_DIM,
    WEIGHTS_PATH,
    SpeechConfig,
    SpeechEncoder,
    SpeechFeaturizer,
)
from fusion.training.ravdess import ravdess_features
from tests.support.speech_helpers import ravdess_dir


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def voice_like(seconds: float, rate: int) -> npt.NDArray[np.float32]:
    """A gliding harmonic source with a syllable-rate loudness envelope (a crude vowel train)."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    source = sum(np.sin(k * phase) / k for k in range(1, 12) if k * f0.max() < rate / 2)
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) + 0.05
    return (0.2 * envelope * source).astype(np.float32)


@pytest.fixture(scope="module")
def featurizer() -> SpeechFeaturizer:
    return SpeechFeaturizer(device=torch.device("cpu"))


# --- decoding and resampling -----------------------------------------------------------------


def test_mulaw_round_trip_of_a_sine_is_within_g711_quantisation() -> None:
    wave = tone(440, 0.5, 8000)
    codes = mulaw_encode(wave)
    assert codes.dtype == np.uint8 and codes.shape == wave.shape
    decoded = to_float_mono(codes.tobytes(), "mulaw", 8000)
    assert decoded.dtype == np.float32 and decoded.shape == wave.shape
    # The coarsest G.711 segment has steps of 1024/32768; rounding errs by at most half of one.
    assert np.max(np.abs(decoded - wave)) <= 512 / 32768 + 1e-6
    assert np.corrcoef(decoded, wave)[0, 1] > 0.999


def test_mulaw_decode_matches_the_g711_table() -> None:
    # Reference points of ITU-T G.711: 0xFF and 0x7F are the two zeros, 0x00/0x80 the extremes.
    assert mulaw_decode(np.array([0xFF, 0x7F], dtype=np.uint8)).tolist() == [0.0, 0.0]
    extremes = mulaw_decode(np.array([0x00, 0x80], dtype=np.uint8)) * 32768
    assert extremes.tolist() == [-32124.0, 32124.0]
    # Decoding is monotonic within each sign half.
    positive = mulaw_decode(np.arange(0xFF, 0x7F, -1, dtype=np.uint8))
    assert np.all(np.diff(positive) > 0)


def test_pcm16_bytes_and_interleaved_stereo_are_decoded_to_mono() -> None:
    samples = np.array([0, 16384, -16384, 32767], dtype="<i2")
    mono = to_float_mono(samples.tobytes(), "pcm16", 16000)
    np.testing.assert_allclose(mono, [0.0, 0.5, -0.5, 32767 / 32768])
    stereo = np.array([16384, -16384, 8192, 8192], dtype="<i2").tobytes()
    np.testing.assert_allclose(to_float_mono(stereo, "pcm16", 8000, channels=2), [0.0, 0.25])
    with pytest.raises(ValueError):
        to_float_mono(samples.tobytes(), "pcm16", 44100)
    with pytest.raises(ValueError):
        to_float_mono(b"\x00\x01\x02", "pcm16", 16000)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_resampling_to_16k_keeps_duration_and_frequency(rate: int) -> None:
    wave = tone(300, 1.0, rate)
    out = resample_to_16k(wave, rate)
    assert out.dtype == np.float32 and out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(14000)))
    peak_hz = np.argmax(spectrum) * 16000 / 14000
    assert abs(peak_hz - 300) < 3
    via_bytes = resample_to_16k(to_float_mono(mulaw_encode(wave).tobytes(), "mulaw", rate), rate)
    assert via_bytes.shape == (16000,)


def test_trim_silence_cuts_edges_and_keeps_silence() -> None:
    speech = tone(200, 0.5, 16000)
    padded = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(8000, np.float32)])
    trimmed = trim_silence(padded)
    assert 0.5 * 16000 <= trimmed.shape[0] <= 0.75 * 16000
    silent = np.zeros(4000, np.float32)
    assert trim_silence(silent).shape == silent.shape


# --- prosody ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 10, 300, 16000])
def test_prosody_of_silence_and_short_input_is_finite(size: int) -> None:
    for wave in (np.zeros(size, np.float32), np.full(size, 1e-3, np.float32)):
        feats = prosody_features(wave)
        assert feats.shape == (PROSODY_DIM,) == (len(PROSODY_NAMES),)
        assert np.all(np.isfinite(feats))
        assert feats[PROSODY_NAMES.index("voiced_ratio")] == 0.0


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pitch_of_a_200_hz_tone_is_200_hz(rate: int) -> None:
    feats = prosody_features(resample_to_16k(tone(200, 1.0, rate), rate))
    names = list(PROSODY_NAMES)
    assert abs(feats[names.index("pitch_mean_hz")] - 200) < 2
    assert feats[names.index("pitch_std_hz")] < 2
    assert feats[names.index("voiced_ratio")] > 0.9
    assert abs(feats[names.index("duration_s")] - 1.0) < 0.05


def test_prosody_tracks_pitch_and_counts_loudness_peaks() -> None:
    names = list(PROSODY_NAMES)
    feats = prosody_features(voice_like(2.0, 16000))
    assert 110 < feats[names.index("pitch_mean_hz")] < 170
    assert feats[names.index("pitch_range_hz")] > 40
    # Four loudness peaks per second in the synthetic envelope.
    assert 3.0 <= feats[names.index("syllable_rate_hz")] <= 5.0


# --- encoder and featurizer ------------------------------------------------------------------


def test_encoder_maps_a_padded_batch_to_one_embedding_each() -> None:
    torch.manual_seed(0)
    encoder = SpeechEncoder(SpeechConfig()).eval()
    wave = torch.randn(3, 16000) * 0.1
    with torch.inference_mode():
        out = encoder(wave, torch.tensor([1.0, 0.75, 0.5]))
    assert out.shape == (3, EMBEDDING_DIM)
    assert torch.isfinite(out).all()


def test_shipped_weights_are_small_and_load_offline(featurizer: SpeechFeaturizer) -> None:
    assert WEIGHTS_PATH.exists()
    assert WEIGHTS_PATH.stat().st_size < 8_000_000
    assert featurizer.encoder.config.lin_neurons + PROSODY_DIM == SPEECH_DIM
    assert not featurizer.encoder.training
    assert len(featurizer.weights_sha256) == 64


@pytest.mark.parametrize("rate", [8000, 16000])
def test_featurize_gives_a_finite_speech_dim_vector(
    featurizer: SpeechFeaturizer, rate: int
) -> None:
    vec = featurizer.featurize(voice_like(1.5, rate), rate)
    assert vec.shape == (SPEECH_DIM,) and vec.dtype == np.float32
    assert np.all(np.isfinite(vec))
    assert np.any(vec != 0)


def test_featurize_is_deterministic_and_batching_agrees(featurizer: SpeechFeaturizer) -> None:
    a, b = voice_like(1.5, 16000), voice_like(2.5, 8000)
    first = featurizer.featurize(a, 16000)
    np.testing.assert_array_equal(first, featurizer.featurize(a, 16000))
    many = featurizer.featurize_many([a, b], [16000, 8000])
    assert many.shape == (2, SPEECH_DIM)
    # Utterances of different lengths never share a padded batch.
    np.testing.assert_allclose(many[0], first, atol=1e-4)
    np.testing.assert_allclose(many[1], featurizer.featurize(b, 8000), atol=1e-4)
    # Near-equal lengths do share one; padding by < 5% barely moves the vector.
    c = voice_like(1.45, 16000)
    pair = featurizer.featurize_many([a, c], 16000)
    np.testing.assert_allclose(pair[0], first, atol=0.1)
    assert featurizer.featurize_many([], 16000).shape == (0, SPEECH_DIM)


def test_featurize_handles_silence_and_tiny_input(featurizer: SpeechFeaturizer) -> None:
    for wave in (np.zeros(16000, np.float32), np.zeros(0, np.float32), tone(200, 0.01, 8000)):
        vec = featurizer.featurize(wave, 16000 if wave.size != 80 else 8000)
        assert vec.shape == (SPEECH_DIM,)
        assert np.all(np.isfinite(vec))


def test_telephone_band_input_gives_a_similar_embedding(featurizer: SpeechFeaturizer) -> None:
    wide = voice_like(2.0, 16000)
    narrow = to_float_mono(mulaw_encode(voice_like(2.0, 8000)), "mulaw", 8000)
    emb_wide = featurizer.featurize(wide, 16000)[:EMBEDDING_DIM]
    emb_narrow = featurizer.featurize(narrow, 8000)[:EMBEDDING_DIM]
    cosine = emb_wide @ emb_narrow / (np.linalg.norm(emb_wide) * np.linalg.norm(emb_narrow))
    assert cosine > 0.8


# --- RAVDESS ---------------------------------------------------------------------------------


def test_ravdess_smoke(featurizer: SpeechFeaturizer, tmp_path: Path) -> None:
    data_dir = ravdess_dir()
    x, labels, actors, files = ravdess_features(
        data_dir, featurizer, cache_dir=tmp_path, limit=4, progress=False
    )
    assert x.shape == (4, SPEECH_DIM) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert len(labels) == len(files) == 4 and set(labels) <= set(RAVDESS)
    assert actors.shape == (4,) and np.all(actors >= 1)
    assert all((data_dir / f).exists() for f in files)
    # Different clips, different vectors.
    assert np.linalg.matrix_rank(x) == 4
    cached = list(tmp_path.glob("ravdess_speech_*.npz"))
    assert len(cached) == 1
    again, *_ = ravdess_features(data_dir, featurizer, cache_dir=tmp_path, limit=4, progress=False)
    np.testing.assert_array_equal(again, x)
