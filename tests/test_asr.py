"""Speech recognition on telephone speech: accuracy, concurrency, speculation, no downloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from fusion.asr import (
    AsrConfig,
    SpeechRecognizer,
    TurnTranscriber,
    normalize_words,
    word_error_rate,
    word_errors,
)
from fusion.vad import SpeechEnded, SpeechPaused, SpeechStarted, VadModel
from tests.support.speech_helpers import caller_16k, needs_espeak, noise

# Callers' sentences for a bank's service line (American spelling, as Whisper writes it).
# espeak-ng's formant voice through the 4 kHz telephone band is hard for Whisper tiny.en:
# on the 60 sentences of bench/voice_calls.py the same recognizer makes about 0.17 WER.
SENTENCES = (
    "I lost my card yesterday and I need to block it",
    "my transfer to my sister has not arrived after three days",
    "I would like to change the pin number on my debit card",
    "there is a payment on my statement that I do not recognize",
    "how long does it take for a bank transfer to reach another country",
    "please cancel the direct debit for my old phone contract",
    "the cash machine kept my card and did not give me any money",
    "I forgot the password for the mobile banking app",
    "can I speak to a real person about my account please",
    "I think someone has stolen my card details",
    "hello I am calling about a problem with my account",
    "I moved house and need to update my address",
    "how much does it cost to send money abroad",
    "the money I sent went to the wrong account",
    "can I get my money back if the shop does not deliver",
    "I need to verify my identity but the app keeps failing",
    "I would like to increase my spending limit",
    "please send me a copy of my statement",
    "how do I change my phone number",
    "I want to report a fraudulent transaction",
)


@pytest.fixture(scope="module")
async def recognizer() -> AsyncIterator[SpeechRecognizer]:
    asr = SpeechRecognizer(AsrConfig(workers=2))
    asr.start()
    yield asr
    await asr.stop()


def test_word_error_rate() -> None:
    assert normalize_words("Can I top-up? It's 5 o'clock!") == [
        "can", "i", "top", "up", "it's", "5", "o'clock",
    ]  # fmt: skip
    assert word_errors("my card was declined", "My card was declined.") == (0, 4)
    assert word_errors("my card was declined", "my car declined") == (2, 4)  # sub + del
    assert word_errors("my card", "my new card") == (1, 2)  # insertion
    assert word_error_rate(["a b c d", "e f"], ["a x c d", ""]) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


@needs_espeak
async def test_telephone_speech_word_error_rate(recognizer: SpeechRecognizer) -> None:
    audio = [caller_16k(text) for text in SENTENCES]
    transcripts = [await recognizer.transcribe(a) for a in audio]
    hypotheses = [t.text for t in transcripts]
    wer = word_error_rate(list(SENTENCES), hypotheses)
    assert wer <= 0.15, list(zip(SENTENCES, hypotheses, strict=True))
    for t, a in zip(transcripts, audio, strict=True):
        assert t.text == t.text.strip() and t.language == "en"
        assert t.duration_s == pytest.approx(a.shape[0] / 16000)
        assert 0.0 < t.compute_s < t.duration_s  # faster than real time
        assert 0.0 <= t.no_speech_prob <= 1.0 and t.avg_logprob <= 0.0


@needs_espeak
async def test_concurrent_transcriptions_queue_and_agree(recognizer: SpeechRecognizer) -> None:
    texts = SENTENCES[:6]
    audio = [caller_16k(text) for text in texts]
    alone = [recognizer.transcribe_sync(a).text for a in audio]
    before = recognizer.stats()
    together = await asyncio.gather(*(recognizer.transcribe(a) for a in audio))
    after = recognizer.stats()
    assert [t.text for t in together] == alone  # same results whatever the interleaving
    assert after.completed - before.completed == len(audio)
    assert after.max_queued >= len(audio) - recognizer.config.workers  # six jobs, two workers
    assert after.queued == 0 and after.running == 0 and recognizer.queue_depth == 0
    assert max(t.queued_s for t in together) > 0.0
    assert after.real_time_factor < 1.0


async def test_silence_and_noise_transcribe_to_nothing(recognizer: SpeechRecognizer) -> None:
    for audio in (np.zeros(16000, np.float32), noise(1.5, 16000, 0.003, seed=11)):
        transcript = await recognizer.transcribe(audio)
        assert transcript.text == "", transcript
    empty = await recognizer.transcribe(np.zeros(0, np.float32))
    assert empty.text == "" and empty.duration_s == 0.0


@needs_espeak
async def test_turn_transcriber_starts_at_the_pause(recognizer: SpeechRecognizer) -> None:
    """The transcript is computed from SpeechPaused and handed over at SpeechEnded."""
    speech = caller_16k("please send me a copy of my statement")
    stream = VadModel().stream()
    turns = TurnTranscriber(recognizer)
    ended: list[SpeechEnded] = []
    for pos in range(0, speech.shape[0] + 16000, 320):
        chunk = speech[pos : pos + 320] if pos < speech.shape[0] else np.zeros(320, np.float32)
        for event in stream.feed(chunk):
            turns.observe(event)
            if isinstance(event, SpeechPaused):
                paused_at = stream.position_s
            if isinstance(event, SpeechEnded):
                ended.append(event)
                ended_at = stream.position_s
    assert len(ended) == 1 and ended[0].same_as_pause
    assert ended_at - paused_at == pytest.approx(0.3, abs=0.04)  # the head start
    turns.observe(SpeechStarted(at_s=ended_at))  # the next turn begins before finish()
    transcript = await turns.finish(ended[0])
    assert turns.speculated == 1 and turns.reused == 1
    assert word_error_rate(["please send me a copy of my statement"], [transcript.text]) <= 0.15
    await turns.aclose()


@needs_espeak
async def test_turn_transcriber_drops_speculation_when_speech_resumes(
    recognizer: SpeechRecognizer,
) -> None:
    first = caller_16k("my card", trim=True)
    second = caller_16k("was declined", trim=True)
    gap = np.zeros(int(0.4 * 16000), np.float32)  # a pause, not the end of the turn
    stream = VadModel().stream()
    turns = TurnTranscriber(recognizer)
    ended: list[SpeechEnded] = []
    for event in stream.feed(np.concatenate([first, gap, second, np.zeros(16000, np.float32)])):
        turns.observe(event)
        if isinstance(event, SpeechEnded):
            ended.append(event)
    # Two pauses: the first speculation is dropped when the caller goes on; the second one,
    # after the whole sentence, is the turn's transcript.
    assert len(ended) == 1 and ended[0].same_as_pause
    transcript = await turns.finish(ended[0])
    assert turns.speculated == 2 and turns.reused == 1
    assert "card" in transcript.text.lower()
    assert "declined" in transcript.text.lower()
    await turns.aclose()


async def test_requires_start_and_never_downloads() -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.bin"):
        SpeechRecognizer(AsrConfig(model_path="tiny.en"))  # a hub name: not fetched
    asr = SpeechRecognizer(AsrConfig(workers=1))
    with pytest.raises(RuntimeError, match="start"):
        await asr.transcribe(np.zeros(16000, np.float32))
    asr.start()
    await asr.stop()
    with pytest.raises(ValueError):
        AsrConfig(device="tpu")
