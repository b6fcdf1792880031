"""Audio decoding and conditioning shared by training and inference of the speech encoder.

Telephony audio arrives as G.711 mu-law bytes at 8 kHz or as 16-bit PCM at 8 or 16 kHz; the
speech encoder and the prosody features both expect float32 mono at 16 kHz in [-1, 1].
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf  # type: ignore[import-untyped, unused-ignore]
import torch
import torchaudio

TARGET_RATE = 16000
SUPPORTED_RATES = (8000, 16000)

Encoding = Literal["pcm16", "mulaw"]
FloatArray = npt.NDArray[np.float32]

# G.711 constants: the encoder adds BIAS so that every segment's range starts at a power of two.
_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


def _mulaw_decode_table() -> npt.NDArray[np.int16]:
    # G.711 stores the code bit-inverted: sign, 3-bit segment, 4-bit mantissa.
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_MULAW_TABLE = _mulaw_decode_table()


def mulaw_decode(codes: npt.NDArray[np.uint8]) -> FloatArray:
    """G.711 mu-law bytes to float32 in [-1, 1].

    torchaudio's mu_law_decoding implements the continuous companding law on its own 0..255
    quantisation, which is not the G.711 byte layout that telephone networks send, so the
    ITU table is used instead.
    """
    return (_MULAW_TABLE[np.asarray(codes, dtype=np.uint8)].astype(np.float32)) / 32768.0


def mulaw_encode(wave: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """float in [-1, 1] to G.711 mu-law bytes: the inverse of `mulaw_decode` up to quantisation."""
    x = np.clip(np.asarray(wave, dtype=np.float64), -1.0, 1.0)
    sample = np.round(x * 32767.0).astype(np.int32)
    sign = np.where(sample < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(sample), _MULAW_CLIP) + _MULAW_BIAS
    # The segment is the position of the highest set bit above bit 7 (magnitude >= 0x84 > 2**7).
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    codes: npt.NDArray[np.uint8] = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return codes


def pcm16_decode(data: bytes | bytearray | memoryview) -> FloatArray:
    """Little-endian signed 16-bit PCM bytes to float32 in [-1, 1)."""
    raw = bytes(data)
    if len(raw) % 2:
        raise ValueError("pcm16 audio must have an even number of bytes")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def pcm16_encode(wave: npt.ArrayLike) -> bytes:
    """float in [-1, 1] to little-endian signed 16-bit PCM bytes (rounded, clipped): the
    inverse of `pcm16_decode` to half a quantisation step."""
    x = np.round(np.asarray(wave, dtype=np.float64) * 32768.0)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


@functools.lru_cache(maxsize=32)
def _resampler(from_rate: int, to_rate: int) -> torchaudio.transforms.Resample:
    # torchaudio.transforms.Resample computes its windowed-sinc kernel once at construction;
    # functional.resample would rebuild it on every call, which dominates on 20 ms chunks.
    return torchaudio.transforms.Resample(from_rate, to_rate)


def _check_rates(from_rate: int, to_rate: int) -> None:
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")


def resample(wave: npt.ArrayLike, from_rate: int, to_rate: int) -> FloatArray:
    """Band-limited resampling of mono float audio (torchaudio's windowed sinc, the kernel of
    `torchaudio.functional.resample`, cached per rate pair).

    For whole signals. A stream cut into 20 ms chunks should go through `StreamResampler`:
    resampling each chunk on its own pads both ends with zeros and leaves a click at every
    chunk boundary.
    """
    _check_rates(from_rate, to_rate)
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio of shape [N], got {x.shape}")
    if from_rate == to_rate or x.size == 0:
        return np.ascontiguousarray(x, dtype=np.float32)
    with torch.inference_mode():
        out = _resampler(from_rate, to_rate)(torch.from_numpy(np.ascontiguousarray(x)))
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


class StreamResampler:
    """`resample` for a stream fed in chunks, with the same kernel and no seams.

    Output block k (the `new` output samples of one `orig`-sample input block, rates reduced by
    their gcd) depends on the input from k*orig - width to (k+1)*orig + width. The resampler
    keeps that much left context and emits a block as soon as its right context has arrived, so
    it holds back `width + orig` input samples at most (1 ms for 8 -> 16 kHz). Concatenating
    every `process` output and `flush` gives exactly `resample` of the whole signal.

    One instance per stream; not thread-safe. Memory is bounded by the kernel width plus the
    largest chunk.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        _check_rates(from_rate, to_rate)
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._identity = from_rate == to_rate
        gcd = math.gcd(from_rate, to_rate)
        self._orig = from_rate // gcd
        self._new = to_rate // gcd
        if not self._identity:
            module = _resampler(from_rate, to_rate)
            # [new phases, taps]: torchaudio's kernel, the one resample() applies.
            self._kernel: FloatArray = np.ascontiguousarray(
                module.kernel[:, 0, :].numpy(), dtype=np.float32
            )
            self._width: int = int(module.width)
        else:
            self._width = 0
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]
        self._next_block = 0  # next output block to emit
        self._fed = 0  # input samples fed so far
        self._emitted = 0  # output samples emitted so far

    @property
    def delay_samples(self) -> int:
        """Input samples held back at most, waiting for the kernel's right context."""
        return 0 if self._identity else self._width + self._orig

    @property
    def buffered(self) -> int:
        """Input samples currently held (context plus not yet emitted)."""
        return int(self._buf.shape[0])

    def _emit(self, available_end: int) -> FloatArray:
        o, w = self._orig, self._width
        last = (available_end - o - w) // o  # last block whose right context is in
        if last < self._next_block:
            return np.zeros(0, dtype=np.float32)
        lo = self._next_block * o - w
        hi = last * o + o + w
        segment = self._buf[max(lo, self._buf_start) - self._buf_start : hi - self._buf_start]
        if lo < self._buf_start:  # before the stream began: zeros, as resample() pads
            segment = np.concatenate([np.zeros(self._buf_start - lo, np.float32), segment])
        # Polyphase filtering as one small matmul in numpy: torch's conv1d costs about a
        # millisecond of dispatch per call, 30x the arithmetic of a 20 ms chunk.
        taps = self._kernel.shape[1]
        frames = np.lib.stride_tricks.sliding_window_view(segment, taps)[::o]
        samples = (frames @ self._kernel.T).reshape(-1)
        self._next_block = last + 1
        # Keep only the left context the next block needs.
        keep_from = max(self._buf_start, self._next_block * o - w)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        self._emitted += samples.shape[0]
        return np.ascontiguousarray(samples, dtype=np.float32)

    def process(self, chunk: npt.ArrayLike) -> FloatArray:
        """Resample the next chunk; returns what can be emitted so far (possibly empty)."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._fed += x.shape[0]
        if self._identity:
            self._emitted += x.shape[0]
            return np.array(x, dtype=np.float32, copy=True)
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        return self._emit(self._buf_start + self._buf.shape[0])

    def flush(self) -> FloatArray:
        """End of stream: emit the held-back tail (zero right context, as `resample` does)."""
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        target = math.ceil(self._new * self._fed / self._orig)  # resample()'s output length
        pad = np.zeros(self._width + self._orig, np.float32)
        self._buf = np.concatenate([self._buf, pad])
        out = self._emit(self._buf_start + self._buf.shape[0])
        excess = self._emitted - target
        if excess > 0:
            out = out[: out.shape[0] - excess]
            self._emitted = target
        self._buf = np.zeros(0, dtype=np.float32)
        return out


def to_float_mono(
    pcm: bytes | npt.NDArray[np.generic],
    encoding: Encoding = "pcm16",
    sample_rate: int = TARGET_RATE,
    channels: int = 1,
) -> FloatArray:
    """Decode raw telephony/microphone audio to float32 mono in [-1, 1], at `sample_rate`.

    `pcm` is either the wire bytes (little-endian int16 for "pcm16", one byte per sample for
    "mulaw"; interleaved when `channels` > 1) or an array already holding those samples (int16,
    uint8 mu-law codes, or floats in [-1, 1]; shape [N] or [N, channels]). The rate is checked
    here so that a wrongly labelled stream fails at the edge instead of producing garbage features.
    """
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(
            f"unsupported sample rate {sample_rate}; expected one of {SUPPORTED_RATES}"
        )
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if encoding not in ("pcm16", "mulaw"):
        raise ValueError(f"unknown encoding {encoding!r}")

    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = bytes(pcm)
        if encoding == "pcm16":
            if len(raw) % 2:
                raise ValueError("pcm16 audio must have an even number of bytes")
            samples: npt.NDArray[np.generic] = np.frombuffer(raw, dtype="<i2")
        else:
            samples = np.frombuffer(raw, dtype=np.uint8)
    else:
        samples = np.asarray(pcm)

    if samples.ndim == 1 and channels > 1:
        usable = samples.shape[0] - samples.shape[0] % channels
        samples = samples[:usable].reshape(-1, channels)
    if samples.ndim not in (1, 2):
        raise ValueError(f"expected audio of shape [N] or [N, C], got {samples.shape}")

    if encoding == "mulaw":
        if samples.dtype.kind == "f":
            raise ValueError("mu-law audio must be integer codes 0..255, not floats")
        wave = mulaw_decode(samples.astype(np.uint8))
    elif samples.dtype.kind == "f":
        wave = samples.astype(np.float32)
    elif samples.dtype.kind in "iu":
        wave = samples.astype(np.float32) / 32768.0
    else:
        raise ValueError(f"unsupported sample dtype {samples.dtype}")

    if wave.ndim == 2:
        wave = wave.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample_to_16k(wave: npt.ArrayLike, sample_rate: int) -> FloatArray:
    """Band-limited resampling (torchaudio's windowed sinc) of mono float audio to 16 kHz."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio of shape [N], got {x.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    return resample(x, sample_rate, TARGET_RATE)


def load_flac(path: Path | str) -> tuple[FloatArray, int]:
    """Read an audio file (FLAC or anything libsndfile reads) as float32 mono and its rate."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def trim_silence(
    wave: FloatArray,
    sample_rate: int = TARGET_RATE,
    threshold_db: float = 35.0,
    pad_seconds: float = 0.1,
) -> FloatArray:
    """Cut leading and trailing stretches quieter than `threshold_db` below the loudest frame.

    RAVDESS clips open with about a second of room tone; training and inference trim alike so
    the encoder never learns that silence length means anything. Silent input is returned as is.
    """
    frame = max(1, int(0.02 * sample_rate))
    n_frames = wave.shape[0] // frame
    if n_frames == 0:
        return wave
    frames = wave[: n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    rms_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loudest = float(rms_db.max())
    if loudest < -80.0:
        return wave
    active = np.flatnonzero(rms_db > loudest - threshold_db)
    pad = int(pad_seconds * sample_rate)
    start = max(0, int(active[0]) * frame - pad)
    stop = min(wave.shape[0], (int(active[-1]) + 1) * frame + pad)
    return wave[start:stop]
