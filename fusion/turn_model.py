"""End-of-turn model: has the caller finished, judged from how the last 8 s of speech sound.

The network is Smart Turn v3.2 (BSD-2-Clause), an int8 ONNX file of about 8.7 MB that ships
inside the `pipecat-ai` wheel; it is found through the wheel's file list, so pipecat itself is
never imported. It reads Whisper-style log-mel features of the last 8 s of 16 kHz audio and
answers, per clip, the probability that the speaker's turn is complete (the graph ends in a
sigmoid: its output named `logits` already lies in [0, 1]). Model card:
fusion/weights/turn_model.md.

`turn_features` is this project's own implementation of the front end the network was
trained with (the test compares it with the reference that ships in the wheel):

1. the last 8 s of the clip, zero-padded at the start when shorter (the end of the speech is
   what matters, and it stays at the end of the window);
2. the waveform normalised to zero mean and unit variance over the whole 8 s window;
3. a short-time power spectrum: 400-sample frames every 160 samples (25 ms / 10 ms),
   periodic Hann window, the signal reflect-padded by half a frame at both ends so that
   frame k is centred on sample 160 k;
4. 80 triangular mel filters on the Slaney mel scale from 0 to 8 kHz, each scaled to unit
   area (Slaney normalisation);
5. log10 with a floor of 1e-10; the last of the 801 frames dropped (800 frames); values
   more than 8 below the clip's maximum raised to that floor; then (x + 4) / 4.

`TurnModel.probabilities` runs a batch of clips on the calling thread; serving code runs it
in a `MicroBatcher` worker (assistant/voice/models.py), never on the event loop. On the 2-core
CPU machine the forward of one clip costs about 120 ms of one core when the machine is quiet,
and its features about 30 ms more; a batch of four costs four times one, so batching saves no
CPU here and only orders the work (docs/voice.md has the figures).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE: Final = 16000
WINDOW_S: Final = 8
N_FFT: Final = 400
HOP: Final = 160
N_MELS: Final = 80
FRAMES: Final = WINDOW_S * SAMPLE_RATE // HOP  # 800
DISTRIBUTION: Final = "pipecat-ai"
WEIGHTS: Final = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def default_model_path() -> Path:
    """The Smart Turn v3.2 ONNX file inside the installed `pipecat-ai` wheel (no download,
    no import of pipecat)."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the end-of-turn model needs the {DISTRIBUTION!r} package (it ships the weights): "
            f"pip install '{DISTRIBUTION}>=1.14,<2', or set ASSISTANT_TURN_MODEL to the .onnx "
            "file, or ASSISTANT_TURN_DETECTION=silence"
        ) from None
    for entry in files:
        if entry.as_posix() == WEIGHTS:
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"the installed {DISTRIBUTION!r} has no {WEIGHTS} (it moved or was removed): "
        "set ASSISTANT_TURN_MODEL to the .onnx file, or ASSISTANT_TURN_DETECTION=silence"
    )


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above.
    linear = 3.0 * hz / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = 200.0 * mel / 3.0
    log_part = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log_part, linear)


@functools.cache
def mel_filters() -> npt.NDArray[np.float64]:
    """[N_MELS, N_FFT // 2 + 1] Slaney-normalised triangular filters over 0-8000 Hz."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_mel = np.linspace(
        _hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2.0)), N_MELS + 2
    )
    edges = _mel_to_hz(edges_mel)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Each filter scaled to unit area, so wide high-frequency filters do not dominate.
    return triangles * (2.0 / (upper - lower))


@functools.cache
def _filters_by_bin() -> npt.NDArray[np.float64]:
    return np.ascontiguousarray(mel_filters().T)


@functools.cache
def _hann() -> npt.NDArray[np.float64]:
    # Periodic (not symmetric) Hann: the window of a 400-point DFT.
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


@functools.cache
def _frame_index() -> npt.NDArray[np.intp]:
    starts = np.arange(FRAMES + 1) * HOP
    return starts[:, None] + np.arange(N_FFT)[None, :]


def last_window(audio_16k: npt.ArrayLike) -> FloatArray:
    """The last 8 s of a clip, zero-padded at the start when it is shorter."""
    x = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    size = WINDOW_S * SAMPLE_RATE
    if x.shape[0] >= size:
        return np.ascontiguousarray(x[-size:])
    out = np.zeros(size, dtype=np.float32)
    out[size - x.shape[0] :] = x
    return out


def turn_features(audio_16k: npt.ArrayLike) -> FloatArray:
    """[80, 800] log-mel features of the last 8 s of a 16 kHz clip, as the model reads them."""
    x = last_window(audio_16k)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = padded[_frame_index()] * _hann()
    spectrum = np.fft.rfft(frames, axis=1)  # [801, 201]
    power = spectrum.real**2 + spectrum.imag**2
    mel = power[:-1] @ _filters_by_bin()  # [800, 80]: the last frame is not used
    log_mel = np.log10(np.maximum(mel, 1e-10)).T
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    features: FloatArray = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return features


@dataclass(frozen=True, slots=True)
class TurnModelConfig:
    model_path: Path | str | None = None  # None: default_model_path()
    # Intra-op threads of one forward. On the 2-core machine two threads were slower than
    # one (about 130 against 95 ms a clip, beside the other models' threads).
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("TurnModelConfig.threads must be at least 1")


class TurnModel:
    """Smart Turn v3.2, loaded once and shared by every call; `probabilities` is thread-safe
    (onnxruntime sessions are) and blocking."""

    def __init__(self, config: TurnModelConfig | None = None) -> None:
        import onnxruntime  # type: ignore[import-untyped, unused-ignore]

        self.config = cfg = config or TurnModelConfig()
        self.path = Path(cfg.model_path) if cfg.model_path is not None else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"no end-of-turn model at {self.path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cfg.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probabilities(self, clips: Sequence[FloatArray]) -> list[float]:
        """For each 16 kHz clip (speech up to now), the probability that the turn is over."""
        if not clips:
            return []
        features = np.stack([turn_features(clip) for clip in clips])
        (out,) = self._session.run(["logits"], {"input_features": features})
        return [float(p) for p in np.asarray(out, dtype=np.float32).reshape(-1)]
