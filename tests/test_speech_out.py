"""Spoken replies: espeak-ng synthesis, cancellation, engine selection, 20 ms framing."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import time
import wave

import numpy as np
import pytest

from assistant.voice.synthesis import (
    MULAW_FRAME_BYTES,
    EspeakConfig,
    EspeakTts,
    Synthesis,
    TextToSpeech,
    TtsError,
    mulaw_frames,
    parse_wav,
    pcm16_frames,
    select_tts,
)
from fusion.audio import mulaw_decode, pcm16_decode, resample
from tests.support.speech_helpers import needs_espeak


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_parse_wav_reads_plain_and_streamed_headers() -> None:
    samples = np.sin(np.linspace(0, 100, 1000)).astype(np.float32) * 0.5
    data = wav_bytes(samples, 22050)
    audio, rate = parse_wav(data)
    assert rate == 22050 and audio.shape == (1000,)
    np.testing.assert_allclose(audio, samples, atol=1e-4)
    # A streamed WAV (espeak-ng --stdout) declares placeholder sizes larger than the data.
    streamed = bytearray(data)
    streamed[4:8] = (0x7FFFF000).to_bytes(4, "little")
    streamed[40:44] = (0x7FFFF000).to_bytes(4, "little")
    audio2, _ = parse_wav(bytes(streamed) + b"\x01")  # and an odd trailing byte
    np.testing.assert_array_equal(audio2, audio)
    for bad in (b"", b"not a wav file at all", data[:30]):
        with pytest.raises(TtsError):
            parse_wav(bad)


def test_mulaw_frames_are_160_bytes_padded_with_silence() -> None:
    rate = 22050
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.5 * rate) + 7) / rate)).astype(
        np.float32
    )
    frames = mulaw_frames(audio, rate)
    at_8k = resample(audio, rate, 8000)
    assert len(frames) == -(-at_8k.shape[0] // MULAW_FRAME_BYTES)
    assert all(isinstance(f, bytes) and len(f) == 160 for f in frames)
    tail = len(frames) * 160 - at_8k.shape[0]
    assert 0 < tail < 160 and frames[-1][-tail:] == b"\xff" * tail
    decoded = mulaw_decode(np.frombuffer(b"".join(frames), dtype=np.uint8))[: at_8k.shape[0]]
    assert np.abs(decoded - at_8k).max() < 0.02  # G.711 quantisation only
    assert mulaw_frames(np.zeros(0, np.float32), rate) == []


def test_pcm16_frames_are_20_ms() -> None:
    audio = np.linspace(-0.5, 0.5, 22050, dtype=np.float32)
    for out_rate, size in ((16000, 640), (8000, 320)):
        frames = pcm16_frames(audio, 22050, out_rate)
        assert all(len(f) == size for f in frames)
        expected = resample(audio, 22050, out_rate)
        decoded = pcm16_decode(b"".join(frames))
        assert decoded.shape[0] - expected.shape[0] < size // 2
        np.testing.assert_allclose(decoded[: expected.shape[0]], expected, atol=1e-4)
    with pytest.raises(ValueError):
        pcm16_frames(audio, 22050, 11025)


@needs_espeak
async def test_espeak_synthesizes_decodable_frames() -> None:
    tts = select_tts("espeak")
    assert isinstance(tts, EspeakTts) and isinstance(tts, TextToSpeech)
    result = await tts.synthesize("Your card has been blocked. A new one is on its way.")
    assert isinstance(result, Synthesis)
    assert result.sample_rate == 22050 and result.audio.dtype == np.float32
    assert 1.5 < result.duration_s < 8.0
    assert 0.05 < np.abs(result.audio).max() <= 1.0
    frames = mulaw_frames(result.audio, result.sample_rate)
    assert len(frames) == pytest.approx(result.duration_s * 50, abs=1)
    decoded = mulaw_decode(np.frombuffer(b"".join(frames), dtype=np.uint8))
    reference = resample(result.audio, result.sample_rate, 8000)
    n = reference.shape[0]
    assert np.corrcoef(decoded[:n], reference)[0, 1] > 0.99
    assert await tts.synthesize("   \n ") is None  # nothing to say
    assert tts.running_pids == frozenset()


@needs_espeak
async def test_cancelling_synthesis_kills_espeak() -> None:
    """Barge-in: cancelling the task that awaits synthesis ends the espeak-ng process."""
    tts = EspeakTts(EspeakConfig(max_chars=200_000))
    task = asyncio.create_task(tts.synthesize("a long answer that goes on " * 4000))
    for _ in range(500):
        if tts.running_pids:
            break
        await asyncio.sleep(0.005)
    (pid,) = tts.running_pids
    await asyncio.sleep(0.1)  # mid-synthesis (the whole text takes seconds)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tts.running_pids == frozenset()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


@needs_espeak
async def test_cancelling_on_a_busy_event_loop_never_hangs() -> None:
    """Under load the event loop reads espeak-ng's output late; asyncio pauses a pipe with
    more than its limit buffered, and after a cancelled read nothing would ever resume it:
    reaping the killed process must not wait on that pipe forever."""
    stop = asyncio.Event()

    async def busy_loop() -> None:
        while not stop.is_set():
            time.sleep(0.03)  # noqa: ASYNC251 -- blocks the event loop, as a loaded server does
            await asyncio.sleep(0)

    hog = asyncio.create_task(busy_loop())
    tts = EspeakTts(EspeakConfig(max_chars=100_000))
    try:
        for delay in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4):
            task = asyncio.create_task(tts.synthesize("Your transfer is on its way. " * 60))
            await asyncio.sleep(delay)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"synthesis cancelled after {delay} s did not finish"
            assert tts.running_pids == frozenset()
    finally:
        stop.set()
        await hog


async def test_engine_failure_is_an_error_not_silence() -> None:
    failing = shutil.which("false")  # exits 1 without output, like a broken install
    assert failing is not None
    tts = EspeakTts(EspeakConfig(binary=failing))
    with pytest.raises(TtsError, match="exited with 1"):
        await tts.synthesize("hello")
    assert tts.running_pids == frozenset()


def test_select_tts_without_the_binary_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="assistant.voice.synthesis"):
        assert select_tts("espeak", binary="espeak-ng-not-installed-here") is None
    lines = [r for r in caplog.records if r.name == "assistant.voice.synthesis"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "espeak-ng-not-installed-here" in lines[0].getMessage()
    assert "text only" in lines[0].getMessage()


def test_select_tts_off_and_unknown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="assistant.voice.synthesis"):
        assert select_tts("none") is None
    assert len([r for r in caplog.records if r.name == "assistant.voice.synthesis"]) == 1
    with pytest.raises(ValueError, match="unknown"):
        select_tts("festival")
