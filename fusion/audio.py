"""Audio decoding and conditioning shared by training and inference of the speech encoder.

Telephony audio arrives as G.711 mu-law bytes at 8 kHz or as 16-bit PCM at 8 or 16 kHz; the
speech encoder and the prosody features both expect float32 mono at 16 kHz in [-1, 1].
"""

from __future__ import annotations

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
    if sample_rate == TARGET_RATE or x.size == 0:
        return np.ascontiguousarray(x)
    out = torchaudio.functional.resample(torch.from_numpy(x), sample_rate, TARGET_RATE)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def decode_to_16k(
    pcm: bytes | npt.NDArray[np.generic],
    encoding: Encoding = "pcm16",
    sample_rate: int = TARGET_RATE,
    channels: int = 1,
) -> FloatArray:
    """`to_float_mono` then `resample_to_16k`: what a voice turn goes through before featurizing."""
    return resample_to_16k(to_float_mono(pcm, encoding, sample_rate, channels), sample_rate)


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
