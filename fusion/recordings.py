"""A recorded voice note as the recognizer hears it: 16 kHz float mono.

A chat client sends a note as raw telephony or microphone samples (16-bit PCM or G.711 mu-law
at 8 or 16 kHz) or as a browser records it: Opus in WebM (Chrome, Edge) or Ogg (Firefox),
from `MediaRecorder`. Containers are read with PyAV (FFmpeg's demuxers and libopus), which
gives the decoded samples mixed down to mono at the codec's own rate (48 kHz for Opus); the
rate conversion is `fusion.audio.resample`, the same kernel the voice calls use.

Opus packs a minute of speech into a few hundred kilobytes, and a hostile file can claim far
more: decoding stops as soon as the note is longer than the caller allows, so memory stays
bounded by that length, never by what the file says.
"""

from __future__ import annotations

import io
from typing import Final

import av
import numpy as np
import numpy.typing as npt

from fusion.audio import TARGET_RATE, Encoding, resample, to_float_mono

__all__ = [
    "CONTAINERS",
    "RAW_ENCODINGS",
    "RecordingTooLong",
    "UndecodableRecording",
    "decode_note",
]

FloatArray = npt.NDArray[np.float32]

# Raw samples at a rate the sender names, and recordings in a container that carries its own.
RAW_ENCODINGS: Final[tuple[Encoding, ...]] = ("pcm16", "mulaw")
CONTAINERS: Final = ("webm", "ogg")


class UndecodableRecording(ValueError):
    """The bytes are not audio in the encoding they were sent as."""


class RecordingTooLong(ValueError):
    """The audio lasts longer than allowed; `seconds` is how much was decoded before stopping."""

    def __init__(self, seconds: float, limit_s: float) -> None:
        super().__init__(f"{seconds:.1f} s of audio; the limit is {limit_s:g} s")
        self.seconds = seconds


def decode_note(
    data: bytes, encoding: str, sample_rate: int | None, *, max_seconds: float
) -> FloatArray:
    """A whole note's bytes -> float32 mono at 16 kHz in [-1, 1].

    `sample_rate` is the rate of raw samples (pcm16, mulaw) and is not read for a container.
    Raises UndecodableRecording, or RecordingTooLong beyond `max_seconds`. Blocking (tens of
    milliseconds for a minute of Opus): call it from a worker thread.
    """
    if encoding in CONTAINERS:
        wave, rate = _decode_container(data, encoding, max_seconds)
        return resample(wave, rate, TARGET_RATE)
    raw = next((e for e in RAW_ENCODINGS if e == encoding), None)
    if raw is None or sample_rate is None:
        raise UndecodableRecording(f"{encoding!r} audio at {sample_rate} Hz cannot be decoded")
    try:
        wave = to_float_mono(data, raw, sample_rate)
    except ValueError as exc:
        raise UndecodableRecording(str(exc)) from None
    if wave.shape[0] > max_seconds * sample_rate:
        raise RecordingTooLong(wave.shape[0] / sample_rate, max_seconds)
    return resample(wave, sample_rate, TARGET_RATE)


def _decode_container(data: bytes, container: str, max_seconds: float) -> tuple[FloatArray, int]:
    chunks: list[FloatArray] = []
    samples = 0
    rate = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=container) as box:
            if not box.streams.audio:
                raise UndecodableRecording(f"the {container} recording holds no audio stream")
            stream = box.streams.audio[0]
            mono = av.AudioResampler(format="flt", layout="mono")
            for frame in box.decode(stream):
                for piece in mono.resample(frame):
                    rate = piece.sample_rate
                    chunk = piece.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    chunks.append(chunk)
                    samples += chunk.shape[0]
                    if samples > max_seconds * rate:
                        raise RecordingTooLong(samples / rate, max_seconds)
    except (RecordingTooLong, UndecodableRecording):
        raise
    except (av.FFmpegError, ValueError) as exc:
        # A recording cut short decodes up to the cut; only one with nothing usable fails.
        if not chunks:
            raise UndecodableRecording(f"not a {container} recording: {exc}") from None
    if not chunks or rate <= 0:
        raise UndecodableRecording(f"the {container} recording holds no audio")
    return np.concatenate(chunks), rate
