"""The end-of-turn model and the turn-taking modes of calls.

Features against the reference front end that ships in the pipecat-ai wheel; the model on
espeak-ng phrases through the telephone path and the VAD; the turn policy; the settings; and
end to end through a real server: a mid-sentence pause does not cut the caller in two in the
model mode (it does with 500 ms of fixed silence), and a finished question is answered
sooner.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import connect

from assistant import Models, ResponseGenerator, Settings, SettingsError
from assistant.app.runtime import voice_config
from assistant.voice.models import VoiceModels
from assistant.voice.turns import TurnPolicy, trails_off, turn_complete
from fusion import BatcherConfig
from fusion.turn_model import TurnModel, default_model_path, last_window, turn_features
from fusion.vad import SpeechPaused, VadConfig, VadModel
from server import RunningServer, running
from tests.support.speech_helpers import (
    at_8k,
    caller_16k,
    espeak,
    needs_espeak,
    speech_bounds,
    telephone,
)

FloatArray = npt.NDArray[np.float32]

# Phrases the model judges far apart in the tests' caller voice (en+m7) through 8 kHz
# mu-law: a finished question, and the same question stopped where a caller hesitates.
FINISHED_AND_CUT = [
    ("Can you tell me how to change my address?", "Can you tell me how to,"),
    ("Where do I go to report a stolen card?", "Where do I go to,"),
    ("Could you help me to reset my password?", "Could you help me to,"),
]


@pytest.fixture(scope="module")
def turn_model() -> TurnModel:
    return TurnModel()


# features


def test_features_match_the_reference_front_end() -> None:
    """Our log-mel front end against the one that ships with the weights (imported here
    only: serving code never imports pipecat)."""
    reference_module = pytest.importorskip("pipecat.audio.turn.smart_turn._whisper_features")
    reference = reference_module.compute_whisper_log_mel_features
    rng = np.random.default_rng(7)
    clips = [
        caller_16k("I lost my card and I need a new one."),  # speech, shorter than 8 s
        (0.1 * rng.standard_normal(10 * 16000)).astype(np.float32),  # longer: the end counts
        (0.01 * rng.standard_normal(3000)).astype(np.float32),  # a fraction of a second
    ]
    for clip in clips:
        ours = turn_features(clip)
        theirs = reference(last_window(clip))
        assert ours.shape == theirs.shape == (80, 800)
        assert ours.dtype == np.float32
        assert float(np.max(np.abs(ours - theirs))) < 1e-4
    # Zero-padded at the start: the end of the speech stays at the end of the window.
    short = last_window(np.ones(16000, np.float32))
    assert short.shape == (128000,) and short[:-16000].max() == 0 and short[-1] == 1


def test_the_weights_are_found_in_the_wheel_without_importing_pipecat() -> None:
    path = default_model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 1_000_000


def test_a_missing_weights_file_is_a_clear_error(tmp_path: Any) -> None:
    from fusion.turn_model import TurnModelConfig

    with pytest.raises(FileNotFoundError, match="no end-of-turn model"):
        TurnModel(TurnModelConfig(model_path=tmp_path / "absent.onnx"))


# the model on speech


def paused_audio(vad: VadModel, text: str) -> FloatArray:
    """The audio the call puts to the model: what the VAD holds at the caller's first pause."""
    stream = vad.stream(VadConfig(end_silence_ms=1300, pause_ms=200))
    events = stream.feed(caller_16k(text, trim=True)) + stream.feed(np.zeros(8000, np.float32))
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    assert pauses, f"no pause after {text!r}"
    return pauses[0].audio


@needs_espeak
def test_finished_questions_are_complete_and_cut_ones_are_not(turn_model: TurnModel) -> None:
    vad = VadModel()
    clips = [paused_audio(vad, text) for pair in FINISHED_AND_CUT for text in pair]
    probabilities = turn_model.probabilities(clips)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    finished, cut = probabilities[0::2], probabilities[1::2]
    assert min(finished) >= 0.5, probabilities
    assert max(cut) < 0.5, probabilities
    # One clip at a time gives what the batch gave.
    alone = turn_model.probabilities(clips[:1])[0]
    assert alone == pytest.approx(finished[0], abs=1e-4)
    assert turn_model.probabilities([]) == []


# policy


def test_transcripts_that_trail_off() -> None:
    for text in (
        "I'd like to cancel my...",
        "Can you tell me how to?",
        "I lost my card and, um",
        "I want to transfer money to my",
        "My package never arrived even though",
        "Please send me a new statement for,",
    ):
        assert trails_off(text), text
    for text in (
        "I'd like to cancel my broadband contract.",
        "Can you tell me how to change my address?",
        "I lost my card.",
        "It keeps logging me out when I open it.",
        "",
    ):
        assert not trails_off(text), text


def test_turn_complete_needs_the_model_and_a_transcript_that_does_not_trail_off() -> None:
    assert turn_complete(0.9, "I lost my card.", 0.5)
    assert turn_complete(0.9, None, 0.5)  # no speculative transcript: the model decides
    assert not turn_complete(0.9, "I'd like to cancel my...", 0.5)
    assert not turn_complete(0.4, "I lost my card.", 0.5)
    assert turn_complete(0.5, "I lost my card.", 0.5)


# settings


def test_turn_settings_parse_and_refuse_bad_values() -> None:
    default = Settings.from_env({}).voice
    assert default.turn_detection == "silence"
    assert (default.turn_check_ms, default.turn_threshold, default.turn_max_silence_ms) == (
        200,
        0.5,
        1300,
    )
    models = voice_config(Settings.from_env({})).models
    assert models.turns == TurnPolicy("silence", 0.5, 500) and models.vad == VadConfig()

    models = voice_config(Settings.from_env({"ASSISTANT_TURN_DETECTION": "model"})).models
    assert models.turns == TurnPolicy("model", 0.5, 500)
    assert (models.vad.pause_ms, models.vad.end_silence_ms) == (200, 1300)

    tuned = Settings.from_env(
        {
            "ASSISTANT_TURN_DETECTION": "model",
            "ASSISTANT_TURN_CHECK_MS": "120",
            "ASSISTANT_TURN_THRESHOLD": "0.7",
            "ASSISTANT_TURN_MAX_SILENCE_MS": "1500",
            "ASSISTANT_TURN_MODEL": "/opt/turn.onnx",
            "ASSISTANT_VAD_END_SILENCE_MS": "600",
        }
    )
    models = voice_config(tuned).models
    assert models.turns == TurnPolicy("model", 0.7, 600)
    assert (models.vad.pause_ms, models.vad.end_silence_ms, models.vad.speech_pad_ms) == (
        120,
        1500,
        120,
    )
    assert str(models.turn_model.model_path) == "/opt/turn.onnx"

    silence = voice_config(Settings.from_env({"ASSISTANT_TURN_DETECTION": "SILENCE"})).models
    assert silence.turns.detection == "silence" and silence.vad == VadConfig()
    assert silence == voice_config(Settings.from_env({})).models

    for env, needle in (
        ({"ASSISTANT_TURN_DETECTION": "vibes"}, "TURN_DETECTION"),
        ({"ASSISTANT_TURN_CHECK_MS": "soon"}, "TURN_CHECK_MS"),
        ({"ASSISTANT_TURN_CHECK_MS": "0"}, "TURN_CHECK_MS"),
        ({"ASSISTANT_TURN_CHECK_MS": "1500"}, "TURN_MAX_SILENCE_MS"),
        ({"ASSISTANT_TURN_MAX_SILENCE_MS": "50", "ASSISTANT_TURN_CHECK_MS": "20"}, "100 ms"),
        ({"ASSISTANT_TURN_THRESHOLD": "1.5"}, "TURN_THRESHOLD"),
        ({"ASSISTANT_TURN_THRESHOLD": "0"}, "TURN_THRESHOLD"),
    ):
        with pytest.raises(SettingsError, match=needle):
            Settings.from_env(env)


# end to end


@dataclass
class Heard:
    transcripts: list[tuple[float, str]] = field(default_factory=list)  # (delay, text)
    replies: int = 0
    early_ends: int = 0  # utterances the end-of-turn model ended before the longest silence


async def speak_on_native(srv: RunningServer, caller: str, parts: list[bytes]) -> Heard:
    """One caller on /voice (8 kHz mu-law, 20 ms frames at real-time pace) saying `parts`
    back to back, then silence until a reply for every transcript has come. Delays are from
    the end of the last part (the end of speech) to each transcript's arrival."""
    heard = Heard()
    async with connect(srv.url + "/voice") as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "user": {"external_id": caller},
                    "encoding": "mulaw",
                    "sample_rate": 8000,
                }
            )
        )
        started_frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert started_frame["type"] == "started"
        call = srv.runtime.voice.calls[started_frame["call_id"]]
        spoken_end: list[float] = []

        async def read() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                frame = json.loads(message)
                if frame["type"] == "transcript":
                    delay = time.monotonic() - spoken_end[0] if spoken_end else -1.0
                    heard.transcripts.append((delay, frame["text"]))
                elif frame["type"] == "reply":
                    heard.replies += 1
                elif frame["type"] == "error":
                    raise AssertionError(frame)

        reader = asyncio.create_task(read())
        frames = [f for part in parts for f in telephone_frames(part)]
        started = time.monotonic()
        for index, frame in enumerate(frames):
            delay = started + index * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(frame)
        spoken_end.append(time.monotonic())
        silence = b"\xff" * 160
        deadline = time.monotonic() + 30
        sent = len(frames)
        while not heard.transcripts or heard.replies < len(heard.transcripts):
            assert time.monotonic() < deadline, heard
            delay = started + sent * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(silence)
            sent += 1
        # Two more seconds of silence: a late second turn would show here.
        for _ in range(100):
            await asyncio.sleep(max(0.0, started + sent * 0.02 - time.monotonic()))
            await ws.send(silence)
            sent += 1
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 30)
    heard.early_ends = call.stats.early_ends
    return heard


def telephone_frames(mulaw: bytes) -> list[bytes]:
    return [mulaw[i : i + 160] for i in range(0, len(mulaw), 160)]


def spoken(text: str) -> bytes:
    """espeak-ng's rendering of `text` (caller voice), trimmed, as 8 kHz mu-law bytes."""
    wave, rate = espeak(text)
    on, end = speech_bounds(wave, rate)
    return b"".join(telephone(at_8k(wave[int(on * rate) : int(end * rate)], rate)))


def pause(seconds: float) -> bytes:
    return b"\xff" * int(seconds * 8000)


@pytest.fixture
async def model_mode(
    models: Models, generator: ResponseGenerator, voice_models: VoiceModels, sqlite_url: str
) -> AsyncIterator[RunningServer]:
    """A server whose calls put each pause to the end-of-turn model (the settings'
    ASSISTANT_TURN_DETECTION=model), sharing the loaded speech models with the default
    servers, which end an utterance after 500 ms of silence."""
    voice_models.start()
    settings = Settings(host="127.0.0.1", port=0, db_url=sqlite_url, device="cpu")
    listening = voice_config(
        replace(settings, voice=replace(settings.voice, turn_detection="model"))
    ).models
    view = voice_models.sharing(
        replace(voice_models.config, vad=listening.vad, turns=listening.turns)
    )
    try:
        async with running(settings, models=models, generator=generator, voice=view) as srv:
            yield srv
    finally:
        await view.stop()


@needs_espeak
async def test_a_mid_sentence_pause_is_one_turn_with_the_model_and_two_without(
    voice_server: Any, model_mode: RunningServer
) -> None:
    first, rest = "Can you tell me how to,", "change my address?"
    parts = [spoken(first), pause(0.7), spoken(rest)]
    listening = await model_mode.runtime.voice.load()
    assert listening.config.turns.detection == "model"
    batcher = listening.turn_batcher
    assert batcher is not None
    asked = batcher.stats.items
    with_model = await speak_on_native(model_mode, "caller-pause-model", parts)
    # Both pauses went to the model: "not yet" in the middle, "complete" at the end.
    assert batcher.stats.items - asked >= 2
    async with voice_server() as srv:
        assert (await srv.runtime.voice.load()).config.turns.detection == "silence"
        without = await speak_on_native(srv, "caller-pause-silence", parts)
    assert len(with_model.transcripts) == 1, with_model
    assert "address" in with_model.transcripts[0][1].lower(), with_model
    assert len(without.transcripts) == 2, without


@needs_espeak
async def test_the_model_ends_a_finished_question_before_the_longest_silence(
    voice_server: Any, model_mode: RunningServer
) -> None:
    """How much sooner is the turn-taking benchmark's question (bench/turn_taking.py); here,
    that the model's "complete" ends the utterance itself, and silence never does."""
    parts = [spoken("Can you tell me how to change my address?")]
    heard = await speak_on_native(model_mode, "caller-finished-model", parts)
    async with voice_server() as srv:
        without = await speak_on_native(srv, "caller-finished-silence", parts)
    assert len(heard.transcripts) == 1 and len(without.transcripts) == 1, (heard, without)
    assert heard.early_ends == 1, heard
    assert without.early_ends == 0, without


async def test_an_overloaded_model_answers_none_so_the_pause_falls_back_to_silence(
    voice_models: VoiceModels,
) -> None:
    """A full queue is not an error for the call: `turn_probability` answers None (the call
    then ends that pause by the silence rule) and counts it."""
    voice_models.start()
    tight = voice_models.sharing(
        replace(voice_models.config, turn_batch=BatcherConfig(max_batch=1, max_queue=1))
    )
    tight.start()
    try:
        clip = (0.1 * np.random.default_rng(3).standard_normal(2 * 16000)).astype(np.float32)
        answers = await asyncio.gather(*(tight.turn_probability(clip) for _ in range(6)))
    finally:
        await tight.stop()
    assert any(a is None for a in answers) and any(a is not None for a in answers), answers
    assert tight.turn_fallbacks == sum(a is None for a in answers)
    assert all(0.0 <= a <= 1.0 for a in answers if a is not None)
