"""Utterance-level prosody: pitch, loudness, voicing and tempo, as a fixed-size vector.

Pitch comes from a normalised-autocorrelation tracker written here rather than from
torchaudio.functional.detect_pitch_frequency, because the latter returns a pitch for every
frame (silence and noise included) and the statistics below need a voicing decision.

Frames are 40 ms long (over two periods of the lowest pitch searched) with a 10 ms hop. A frame is
"active" when its RMS is within ACTIVE_RANGE_DB of the loudest frame and above an absolute
floor, and "voiced" when it is active, its autocorrelation peak in the pitch range reaches
VOICING_THRESHOLD and its pitch lies within a factor OCTAVE_OUTLIER of the utterance's median.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 16000
FRAME_SECONDS: Final = 0.04
HOP_SECONDS: Final = 0.01
PITCH_MIN_HZ: Final = 60.0
# Emotional speech (angry, fearful, surprised; female voices) regularly exceeds 400 Hz.
PITCH_MAX_HZ: Final = 500.0
VOICING_THRESHOLD: Final = 0.5
OCTAVE_OUTLIER: Final = 1.8
ACTIVE_RANGE_DB: Final = 40.0
SILENCE_FLOOR_DB: Final = -60.0
# Reported energy for input without any active frame; far below any speech level.
EMPTY_ENERGY_DB: Final = -100.0

PROSODY_NAMES: Final = (
    "pitch_mean_hz",  # mean F0 over voiced frames
    "pitch_std_hz",  # standard deviation of F0 over voiced frames
    "pitch_range_hz",  # 95th minus 5th percentile of F0 (max-min is dominated by octave slips)
    "energy_mean_db",  # mean RMS level (dBFS) over active frames
    "energy_std_db",  # its standard deviation
    "voiced_ratio",  # voiced frames / active frames
    "syllable_rate_hz",  # energy-envelope peaks in voiced stretches per second of active span
    "duration_s",  # seconds from the first to the last active frame
)
PROSODY_DIM: Final = len(PROSODY_NAMES)

FloatArray = npt.NDArray[np.float32]


def _frames(wave: npt.NDArray[np.float64], frame: int, hop: int) -> npt.NDArray[np.float64]:
    if wave.shape[0] < frame:
        wave = np.pad(wave, (0, frame - wave.shape[0]))
    count = 1 + (wave.shape[0] - frame) // hop
    index = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    framed: npt.NDArray[np.float64] = wave[index]  # [T, frame]
    return framed


def _pitch_track(
    frames: npt.NDArray[np.float64], sample_rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-frame F0 (Hz) and autocorrelation peak strength in [0, 1]."""
    length = frames.shape[1]
    centred = frames - frames.mean(axis=1, keepdims=True)
    windowed = centred * np.hanning(length)[None, :]
    spectrum = np.fft.rfft(windowed, n=2 * length, axis=1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :length]  # [T, length]
    # Dividing by the window's own autocorrelation undoes the taper's decay with lag.
    window_acf = np.correlate(np.hanning(length), np.hanning(length), mode="full")[length - 1 :]
    acf = acf / np.maximum(window_acf[None, :], 1e-9)
    energy = acf[:, :1]
    nacf = acf / np.maximum(energy, 1e-12)

    lag_min = int(np.floor(sample_rate / PITCH_MAX_HZ))
    lag_max = min(int(np.ceil(sample_rate / PITCH_MIN_HZ)), length - 2)
    search = nacf[:, lag_min : lag_max + 1]
    best = search.max(axis=1)
    # Taking the shortest lag that nearly matches the best peak avoids picking a multiple of
    # the period (an octave too low), the usual failure of plain autocorrelation.
    near_best = search >= 0.9 * best[:, None]
    is_peak = np.zeros_like(near_best)
    is_peak[:, 1:-1] = (search[:, 1:-1] >= search[:, :-2]) & (search[:, 1:-1] >= search[:, 2:])
    candidates = near_best & is_peak
    has_candidate = candidates.any(axis=1)
    first = np.where(has_candidate, candidates.argmax(axis=1), search.argmax(axis=1))

    rows = np.arange(search.shape[0])
    lag = (first + lag_min).astype(np.float64)
    # Parabolic interpolation around the chosen lag for sub-sample period estimates.
    left = nacf[rows, np.clip(first + lag_min - 1, 0, length - 1)]
    centre = nacf[rows, first + lag_min]
    right = nacf[rows, np.clip(first + lag_min + 1, 0, length - 1)]
    denom = left - 2.0 * centre + right
    shift = np.where(
        np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0
    )
    lag = lag + np.clip(shift, -0.5, 0.5)
    strength = np.clip(centre, 0.0, 1.0)
    return sample_rate / lag, strength


def _count_syllables(envelope_db: npt.NDArray[np.float64], voiced: npt.NDArray[np.bool_]) -> int:
    """Peaks of the smoothed loudness envelope that sit in voiced frames, split by >= 2 dB dips."""
    if envelope_db.shape[0] < 3:
        return int(voiced.any())
    kernel = np.hanning(7)
    smooth = np.convolve(envelope_db, kernel / kernel.sum(), mode="same")
    inner = smooth[1:-1]
    local_max = np.flatnonzero((inner > smooth[:-2]) & (inner >= smooth[2:])) + 1
    peaks = [int(p) for p in local_max if voiced[p]]
    kept: list[int] = []
    for peak in peaks:
        if not kept:
            kept.append(peak)
            continue
        previous = kept[-1]
        dip = float(smooth[previous : peak + 1].min())
        # Two peaks only count as two nuclei when the loudness dips between them.
        if min(smooth[previous], smooth[peak]) - dip >= 2.0:
            kept.append(peak)
        elif smooth[peak] > smooth[previous]:
            kept[-1] = peak
    return len(kept)


def prosody_features(wave16k: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> FloatArray:
    """PROSODY_DIM floats (see PROSODY_NAMES) for mono float audio; finite for any input."""
    wave = np.asarray(wave16k, dtype=np.float64).reshape(-1)
    wave = np.nan_to_num(wave, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros(PROSODY_DIM, dtype=np.float32)
    out[3] = EMPTY_ENERGY_DB
    if wave.size == 0:
        return out

    frame = round(FRAME_SECONDS * sample_rate)
    hop = round(HOP_SECONDS * sample_rate)
    frames = _frames(wave, frame, hop)
    rms_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loudest = float(rms_db.max())
    active = (rms_db > loudest - ACTIVE_RANGE_DB) & (rms_db > SILENCE_FLOOR_DB)
    if not active.any():
        return out

    f0, strength = _pitch_track(frames, sample_rate)
    voiced = active & (strength >= VOICING_THRESHOLD)
    voiced &= (f0 >= PITCH_MIN_HZ) & (f0 <= PITCH_MAX_HZ)
    if voiced.any():
        # Frames more than OCTAVE_OUTLIER away from the utterance median are octave slips or
        # low-frequency hum in creaky stretches, not intonation.
        median = float(np.median(f0[voiced]))
        voiced &= (f0 < median * OCTAVE_OUTLIER) & (f0 > median / OCTAVE_OUTLIER)

    active_idx = np.flatnonzero(active)
    span_frames = int(active_idx[-1] - active_idx[0]) + 1
    duration = min(wave.shape[0] / sample_rate, span_frames * HOP_SECONDS + FRAME_SECONDS)

    if voiced.any():
        pitch = f0[voiced]
        out[0] = float(pitch.mean())
        out[1] = float(pitch.std())
        out[2] = float(np.percentile(pitch, 95) - np.percentile(pitch, 5))
    levels = rms_db[active]
    out[3] = float(levels.mean())
    out[4] = float(levels.std())
    out[5] = float(voiced.sum() / active.sum())
    out[6] = _count_syllables(rms_db, voiced) / max(duration, 1e-3)
    out[7] = duration
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
