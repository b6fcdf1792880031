"""Voice activity detection: Silero VAD on 32 ms windows, with hysteresis, cutting utterances.

`VadModel` loads the Silero VAD network once from the installed `silero_vad` package (its
shipped ONNX file, run by onnxruntime on one thread) and is shared by every call. Each call
gets its own `VadStream` (`VadModel.stream(config)`), which holds that call's recurrent state,
its 64-sample context and the utterance being spoken: nothing per call lives in the model.

Feed a stream 16 kHz float32 audio in chunks of any size (20 ms telephony frames are fine);
it runs the network on every complete 512-sample window (about 0.1 ms of CPU each, so it can
run on the event loop) and returns events:

- `SpeechStarted(at_s)`: the first window whose speech probability reached `threshold`. It is
  returned by the `feed` call that completes that window, so at most 32 ms (plus the
  network's own lag) after the caller started: the barge-in signal.
- `SpeechPaused(at_s, audio)`: `pause_ms` of silence after speech (silence = probability
  below `neg_threshold`). `audio` is exactly what `SpeechEnded` will carry if the caller
  stays silent, so transcription can start now, `end_silence_ms - pause_ms` before the turn
  is known to be over (speculative transcription; `fusion.asr.TurnTranscriber` does it).
  Not emitted when `pause_ms` is None.
- `SpeechEnded(at_s, audio, cut)`: `end_silence_ms` of silence after speech; `at_s` is where
  the speech stopped, `audio` the utterance from `lead_pad_ms` before its onset to
  `speech_pad_ms` after its end. `same_as_pause` is True when no speech came after the last
  `SpeechPaused`: then `audio` is that event's array (the same object). An utterance that
  reaches `max_utterance_s` is cut there (`cut=True`) and, since the caller is still
  speaking, a new `SpeechStarted` follows at once in the same `feed` result.
- `SpeechDiscarded(at_s, duration_s)`: the speech after a `SpeechStarted` stopped before
  `min_speech_ms` (a cough, a click): nothing to transcribe.

`end_turn(paused)` lets something outside the stream decide sooner than `end_silence_ms`
(an end-of-turn model that heard the caller finish, in assistant/voice/call.py): while the
caller is still silent in the pause that emitted `paused`, it ends the utterance at once with
the `SpeechEnded` that `end_silence_ms` would have given (`same_as_pause=True`, the pause's
audio); with `silence_ms`, it ends that pause after that much silence instead. Once speech
resumes, or the utterance has ended, it does nothing: the answer came too late.

So every `SpeechStarted` is closed by exactly one `SpeechEnded` or `SpeechDiscarded`, and
`flush()` at the end of the call closes an open one. Between probabilities `neg_threshold`
and `threshold` the state does not change (hysteresis): speech does not end there and
silence already counting keeps counting. Once the probability falls below `neg_threshold`,
the silence is counted from the first window that left the speech band (under `threshold`)
less `network_lag_ms`: the network answers late by a window or two, and counting from
there would add that lag to every turn's end.

Memory per stream is bounded whatever the call length: the current utterance (at most
`max_utterance_s` plus padding) and a pre-roll of `lead_pad_ms`; silence is not kept.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE: Final = 16000
WINDOW: Final = 512  # samples per network call at 16 kHz (32 ms)
CONTEXT: Final = 64  # samples of the previous window the network sees with each window
STATE_SHAPE: Final = (2, 1, 128)


def default_model_path() -> Path:
    """The ONNX weights shipped inside the `silero_vad` package (no download)."""
    import silero_vad

    return Path(silero_vad.__file__).resolve().parent / "data" / "silero_vad.onnx"


@dataclass(frozen=True, slots=True)
class VadConfig:
    threshold: float = 0.5  # speech starts at or above this probability
    neg_threshold: float = 0.35  # silence is below this (hysteresis band in between)
    end_silence_ms: int = 500  # silence after speech that ends the turn
    min_speech_ms: int = 200  # shorter speech is discarded, not transcribed
    max_utterance_s: float = 20.0  # longer utterances are cut and emitted
    speech_pad_ms: int = 150  # audio kept after the end of speech
    # Audio kept before the onset. Whisper tiny.en made about a fifth fewer word errors on
    # telephone speech given half a second before the first word than given 150 ms.
    lead_pad_ms: int = 500
    pause_ms: int | None = 200  # silence that emits SpeechPaused; None: never
    # Silero's probability falls 50-100 ms after the sound stops (measured on telephone
    # speech): silence is counted from this much before the first window under threshold.
    network_lag_ms: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError("VadConfig needs 0 < neg_threshold <= threshold < 1")
        if (
            self.end_silence_ms <= 0
            or min(self.min_speech_ms, self.speech_pad_ms, self.lead_pad_ms) < 0
        ):
            raise ValueError("VadConfig durations must be positive")
        if self.max_utterance_s * 1000 <= self.min_speech_ms:
            raise ValueError("VadConfig.max_utterance_s must exceed min_speech_ms")
        if not 0 <= self.network_lag_ms < self.end_silence_ms:
            raise ValueError("VadConfig.network_lag_ms must lie in [0, end_silence_ms)")
        if self.speech_pad_ms > self.end_silence_ms:
            raise ValueError("VadConfig.speech_pad_ms cannot exceed end_silence_ms")
        if self.pause_ms is not None and not (
            self.speech_pad_ms <= self.pause_ms < self.end_silence_ms
        ):
            raise ValueError("VadConfig.pause_ms must lie between speech_pad_ms and end_silence_ms")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at_s: float  # stream time of the onset (start of the first speech window)


@dataclass(frozen=True, slots=True, eq=False)
class SpeechPaused:
    at_s: float  # stream time where the speech stopped
    audio: FloatArray = field(repr=False)  # 16 kHz utterance, as SpeechEnded would carry it
    started_at_s: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class SpeechEnded:
    at_s: float  # stream time where the speech stopped (or was cut)
    audio: FloatArray = field(repr=False)  # 16 kHz utterance including padding
    cut: bool = False  # True when max_utterance_s forced the end
    started_at_s: float = 0.0  # stream time of the onset
    same_as_pause: bool = False  # audio is the last SpeechPaused's audio (same array)


@dataclass(frozen=True, slots=True)
class SpeechDiscarded:
    at_s: float  # stream time where the too-short speech stopped
    duration_s: float


VadEvent = SpeechStarted | SpeechPaused | SpeechEnded | SpeechDiscarded


class VadModel:
    """The Silero VAD network, loaded once and shared by all streams.

    `probability` is thread-safe (onnxruntime sessions are); a `VadStream` is not and belongs
    to one call, normally driven from the event loop.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        import onnxruntime  # type: ignore[import-untyped, unused-ignore]

        options = onnxruntime.SessionOptions()
        # One 576-sample window is far too small to share between threads.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(path) if path is not None else default_model_path()
        self._session = onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._calls = 0
        self._lock = threading.Lock()

    def probability(self, window: FloatArray, state: FloatArray) -> tuple[float, FloatArray]:
        """Speech probability of one [CONTEXT + WINDOW] input and the next recurrent state."""
        out, new_state = self._session.run(
            None, {"input": window[None, :], "state": state, "sr": self._sr}
        )
        with self._lock:
            self._calls += 1
        return float(out[0, 0]), new_state

    @property
    def windows_processed(self) -> int:
        return self._calls

    def stream(self, config: VadConfig | None = None) -> VadStream:
        return VadStream(self, config or VadConfig())


class VadStream:
    """One call's turn detector. Feed 16 kHz float32 audio; get `VadEvent`s back."""

    def __init__(self, model: VadModel, config: VadConfig) -> None:
        self.model = model
        self.config = config
        ms = SAMPLE_RATE // 1000
        self._pad = config.speech_pad_ms * ms
        self._lead = config.lead_pad_ms * ms
        self._end_silence = config.end_silence_ms * ms
        self._pause = None if config.pause_ms is None else config.pause_ms * ms
        self._min_speech = config.min_speech_ms * ms
        self._lag = config.network_lag_ms * ms
        self._max_utterance = int(config.max_utterance_s * SAMPLE_RATE)
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._input = np.zeros(CONTEXT + WINDOW, dtype=np.float32)  # context + window
        self._partial = np.zeros(WINDOW, dtype=np.float32)
        self._partial_len = 0
        self._windows = 0  # complete windows processed
        # Audio before an onset, for the leading pad: whole windows, oldest dropped.
        self._preroll: deque[FloatArray] = deque(maxlen=math.ceil(self._lead / WINDOW) + 1)
        self._utterance: list[FloatArray] = []  # windows of the current utterance
        self._utt_start = 0  # absolute sample index of the utterance audio's first sample
        self._onset = 0  # absolute sample index of the onset
        self._triggered = False
        self._silence_from: int | None = None  # absolute index where the silence began
        self._below_from: int | None = None  # first window under threshold in this run
        self._paused: SpeechPaused | None = None
        self._pause_end: int | None = None  # silence that ends the current pause (end_turn)
        self.last_probability = 0.0

    # -- introspection -------------------------------------------------------------------

    @property
    def position_s(self) -> float:
        """Stream time of the audio fed so far (complete and partial windows)."""
        return (self._windows * WINDOW + self._partial_len) / SAMPLE_RATE

    @property
    def in_speech(self) -> bool:
        return self._triggered

    @property
    def buffered_samples(self) -> int:
        """Samples held: the utterance, the pre-roll and a partial window."""
        held = sum(int(w.shape[0]) for w in self._utterance)
        return held + sum(int(w.shape[0]) for w in self._preroll) + self._partial_len

    @property
    def max_buffered_samples(self) -> int:
        """Upper bound of `buffered_samples` for this configuration: the lead, the longest
        speech, the end-of-speech silence that ends it, and window rounding."""
        pre = (self._preroll.maxlen or 0) * WINDOW
        return int(self._max_utterance + pre + self._end_silence + 2 * WINDOW)

    # -- feeding -------------------------------------------------------------------------

    def feed(self, samples_16k: npt.ArrayLike) -> list[VadEvent]:
        x = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
        events: list[VadEvent] = []
        pos = 0
        while pos < x.shape[0]:
            take = min(WINDOW - self._partial_len, x.shape[0] - pos)
            self._partial[self._partial_len : self._partial_len + take] = x[pos : pos + take]
            self._partial_len += take
            pos += take
            if self._partial_len == WINDOW:
                self._partial_len = 0
                self._window(self._partial.copy(), events)
        return events

    def flush(self) -> list[VadEvent]:
        """End of the call: close an open utterance (the partial window counts as audio)."""
        events: list[VadEvent] = []
        if self._triggered:
            if self._partial_len:
                self._utterance.append(self._partial[: self._partial_len].copy())
            now = self._windows * WINDOW + self._partial_len
            end = self._silence_from if self._silence_from is not None else now
            self._finish(end, now, events, cut=False)
        self._partial_len = 0
        self._preroll.clear()
        return events

    def end_turn(self, paused: SpeechPaused, silence_ms: int | None = None) -> list[VadEvent]:
        """End the utterance now (or after `silence_ms` of silence) if the caller has been
        silent since `paused`; otherwise nothing (the events that `feed` would return)."""
        if not self._triggered or self._paused is not paused or self._silence_from is None:
            return []
        now = self._windows * WINDOW
        if silence_ms is not None and now - self._silence_from < silence_ms * (SAMPLE_RATE // 1000):
            self._pause_end = silence_ms * (SAMPLE_RATE // 1000)
            return []
        events: list[VadEvent] = []
        self._finish(self._silence_from, now, events, cut=False)
        return events

    # -- internals -----------------------------------------------------------------------

    def _probability(self, window: FloatArray) -> float:
        self._input[:CONTEXT] = self._input[-CONTEXT:]
        self._input[CONTEXT:] = window
        prob, self._state = self.model.probability(self._input, self._state)
        self.last_probability = prob
        return prob

    def _window(self, window: FloatArray, events: list[VadEvent]) -> None:
        start = self._windows * WINDOW
        end = start + WINDOW
        self._windows += 1
        prob = self._probability(window)
        cfg = self.config

        if not self._triggered:
            if prob >= cfg.threshold:
                self._start(start, window, events)
            else:
                self._preroll.append(window)
            return

        self._utterance.append(window)
        if prob >= cfg.threshold:
            self._below_from = None
            self._silence_from = None
            self._paused = self._pause_end = None
        else:
            if self._below_from is None:
                self._below_from = start
            if prob < cfg.neg_threshold and self._silence_from is None:
                # Confirmed silence; it began where the probability left the speech band,
                # less the network's lag.
                self._silence_from = max(self._onset, self._below_from - self._lag)

        if self._silence_from is not None:
            silence = end - self._silence_from
            if silence >= self._end_silence or (
                self._pause_end is not None and silence >= self._pause_end
            ):
                self._finish(self._silence_from, end, events, cut=False)
                return
            if self._pause is not None and self._paused is None and silence >= self._pause:
                speech = self._silence_from - self._onset
                if speech >= self._min_speech:
                    self._paused = SpeechPaused(
                        at_s=self._silence_from / SAMPLE_RATE,
                        audio=self._slice(self._silence_from + self._pad),
                        started_at_s=self._onset / SAMPLE_RATE,
                    )
                    events.append(self._paused)
        elif end - self._onset >= self._max_utterance:
            self._finish(end, end, events, cut=True)
            # The caller is still speaking: the next utterance starts right here.
            self._triggered = True
            self._onset = self._utt_start = end
            events.append(SpeechStarted(at_s=end / SAMPLE_RATE))

    def _start(self, onset: int, window: FloatArray, events: list[VadEvent]) -> None:
        self._triggered = True
        self._onset = onset
        self._silence_from = self._below_from = None
        self._paused = self._pause_end = None
        pre = list(self._preroll)
        self._preroll.clear()
        pre_len = sum(w.shape[0] for w in pre)
        keep = min(pre_len, self._lead)
        lead = np.concatenate(pre)[pre_len - keep :] if keep else None
        self._utterance = [lead, window] if lead is not None else [window]
        self._utt_start = onset - keep
        events.append(SpeechStarted(at_s=onset / SAMPLE_RATE))

    def _slice(self, stop_abs: int) -> FloatArray:
        audio = np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)
        return np.ascontiguousarray(audio[: max(0, stop_abs - self._utt_start)])

    def _finish(self, speech_end: int, now: int, events: list[VadEvent], cut: bool) -> None:
        duration = speech_end - self._onset
        if not cut and duration < self._min_speech:
            events.append(
                SpeechDiscarded(at_s=speech_end / SAMPLE_RATE, duration_s=duration / SAMPLE_RATE)
            )
        else:
            paused = self._paused
            if paused is not None and not cut:
                audio, same = paused.audio, True
            else:
                audio, same = self._slice(speech_end + self._pad), False
            events.append(
                SpeechEnded(
                    at_s=speech_end / SAMPLE_RATE,
                    audio=audio,
                    cut=cut,
                    started_at_s=self._onset / SAMPLE_RATE,
                    same_as_pause=same,
                )
            )
        # What followed the speech (silence) becomes the pre-roll of the next utterance.
        tail = self._slice(now)[max(0, speech_end + self._pad - self._utt_start) :]
        self._utterance = []
        self._triggered = False
        self._silence_from = self._below_from = None
        self._paused = self._pause_end = None
        self._preroll.clear()
        if tail.size:
            for i in range(0, tail.shape[0], WINDOW):
                self._preroll.append(tail[i : i + WINDOW])
