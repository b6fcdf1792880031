"""The telephony audio path: mu-law and PCM codecs, resampling, the stream resampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from fusion.audio import (
    StreamResampler,
    mulaw_decode,
    mulaw_encode,
    pcm16_decode,
    pcm16_encode,
    resample,
)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mulaw_round_trip_is_within_quantisation() -> None:
    codes = np.arange(256, dtype=np.uint8)
    # Every code decodes to a value that encodes back to the same code, except G.711's two
    # zeros (0x7F and 0xFF both decode to 0; 0 encodes as 0xFF).
    back = mulaw_encode(mulaw_decode(codes))
    same = back == codes
    assert same.sum() == 255 and not same[0x7F] and back[0x7F] == 0xFF
    wave = tone(440, 0.5, 8000)
    err = np.abs(mulaw_decode(mulaw_encode(wave)) - wave)
    # Companding: the error grows with the amplitude, about 3% of it at most.
    assert err.max() <= 0.04 * np.abs(wave).max() + 1e-3


def test_pcm16_round_trip() -> None:
    wave = tone(300, 0.25, 16000, amplitude=0.9)
    data = pcm16_encode(wave)
    assert isinstance(data, bytes) and len(data) == 2 * wave.shape[0]
    back = pcm16_decode(data)
    assert back.dtype == np.float32
    assert np.abs(back - wave).max() <= 0.5 / 32768 + 1e-9
    assert pcm16_decode(pcm16_encode(np.array([2.0, -2.0]))).tolist() == [32767 / 32768, -1.0]
    with pytest.raises(ValueError, match="even"):
        pcm16_decode(b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("from_rate", "to_rate"), [(8000, 16000), (16000, 8000), (22050, 8000), (44100, 16000)]
)
def test_resample_lengths_rates_and_torchaudio_agreement(from_rate: int, to_rate: int) -> None:
    wave = tone(440, 1.0, from_rate)
    out = resample(wave, from_rate, to_rate)
    assert out.dtype == np.float32
    assert out.shape[0] == int(np.ceil(wave.shape[0] * to_rate / from_rate))
    ref = torchaudio.functional.resample(torch.from_numpy(wave), from_rate, to_rate).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # The tone's frequency survives: its spectral peak sits at 440 Hz at the new rate.
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * to_rate / out.shape[0]
    assert abs(peak_hz - 440) < 2


def test_resample_identity_and_empty() -> None:
    wave = tone(200, 0.1, 8000)
    np.testing.assert_array_equal(resample(wave, 8000, 8000), wave)
    assert resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)
    with pytest.raises(ValueError):
        resample(wave, 0, 16000)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(8000, 16000), (16000, 8000), (22050, 8000)])
def test_stream_resampler_is_seamless(from_rate: int, to_rate: int) -> None:
    """Chunk by chunk (20 ms, and ragged sizes) equals resampling the whole signal at once."""
    rng = np.random.default_rng(7)
    wave = (tone(440, 1.0, from_rate) + 0.05 * rng.standard_normal(from_rate)).astype(np.float32)
    whole = resample(wave, from_rate, to_rate)
    for sizes in ([from_rate // 50], list(rng.integers(1, 900, size=200))):
        stream = StreamResampler(from_rate, to_rate)
        parts, pos, i = [], 0, 0
        while pos < wave.shape[0]:
            n = int(sizes[i % len(sizes)])
            parts.append(stream.process(wave[pos : pos + n]))
            assert stream.buffered <= n + 2 * stream.delay_samples + from_rate  # bounded
            pos += n
            i += 1
        parts.append(stream.flush())
        joined = np.concatenate(parts)
        assert joined.shape == whole.shape
        np.testing.assert_allclose(joined, whole, atol=1e-5)


def test_stream_resampler_beats_per_chunk_resampling() -> None:
    """Resampling 20 ms chunks separately leaves a seam every chunk; the stream does not."""
    wave = tone(440, 0.5, 8000)
    whole = resample(wave, 8000, 16000)
    naive = np.concatenate([resample(wave[i : i + 160], 8000, 16000) for i in range(0, 4000, 160)])
    stream = StreamResampler(8000, 16000)
    streamed = np.concatenate(
        [stream.process(wave[i : i + 160]) for i in range(0, 4000, 160)] + [stream.flush()]
    )
    assert np.abs(naive - whole).max() > 0.05
    assert np.abs(streamed - whole).max() < 1e-5
    assert stream.delay_samples <= 16  # about a millisecond held back at 8 kHz


def test_stream_resampler_identity_passes_through() -> None:
    stream = StreamResampler(16000, 16000)
    chunk = tone(100, 0.02, 16000)
    np.testing.assert_array_equal(stream.process(chunk), chunk)
    assert stream.flush().shape == (0,)
