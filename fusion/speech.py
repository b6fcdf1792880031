"""Speech features for fusion: an ECAPA-TDNN utterance embedding plus standardized prosody.

The encoder is SpeechBrain's `Fbank` front end and `ECAPA_TDNN`, randomly initialised and trained
on RAVDESS by its trainer (training/speech_encoder.py); its weights ship in
`fusion/weights/speech_encoder.pt` (model card beside it). Nothing is fetched from a model hub.

The filterbank stops at 3.8 kHz: callers reach the assistant through the telephone network
(8 kHz) as well as through 16 kHz microphones, and an encoder that never sees the band above
the telephone cut-off gives the same kind of embedding for both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fusion.audio import TARGET_RATE, resample_to_16k, trim_silence
from fusion.device import select_device
from fusion.prosody import PROSODY_DIM, prosody_features

FloatArray = npt.NDArray[np.float32]

EMBEDDING_DIM: Final = 128
SPEECH_DIM: Final = EMBEDDING_DIM + PROSODY_DIM
WEIGHTS_PATH: Final = Path(__file__).resolve().parent / "weights" / "speech_encoder.pt"
WEIGHTS_FORMAT: Final = 1
# Standardized prosody is clipped so that one odd utterance cannot dominate a downstream layer.
PROSODY_CLIP: Final = 5.0
MAX_PAD_RATIO: Final = 1.05


@dataclass(frozen=True, slots=True)
class SpeechConfig:
    sample_rate: int = TARGET_RATE
    n_mels: int = 40
    f_min: float = 20.0
    # Just under the 4 kHz Nyquist limit of telephone audio (see the module docstring).
    f_max: float = 3800.0
    # A fifth of the published ECAPA-TDNN widths: trainable on two CPU cores in minutes.
    channels: tuple[int, ...] = (128, 128, 128, 128, 384)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 64
    se_channels: int = 64
    res2net_scale: int = 4
    lin_neurons: int = EMBEDDING_DIM
    # Utterances shorter than this are zero-padded; the 5-frame first layer needs some context.
    min_seconds: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechConfig:
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**values)


def _frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B] relative lengths -> [B, T] bool, True on frames that hold real audio."""
    valid = torch.clamp(torch.round(lengths * frames), min=1)  # [B]
    return torch.arange(frames, device=lengths.device)[None, :] < valid[:, None]


class SpeechEncoder(nn.Module):
    """Waveforms [B, N] at 16 kHz with relative lengths [B] -> utterance embeddings [B, EMB]."""

    def __init__(self, config: SpeechConfig | None = None) -> None:
        # SpeechBrain's import takes about a second (it brings scipy.stats); the server builds
        # the speech models after it is ready, so importing here keeps that off its start.
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        super().__init__()
        self.config = config or SpeechConfig()
        c = self.config
        self.fbank = Fbank(sample_rate=c.sample_rate, n_mels=c.n_mels, f_min=c.f_min, f_max=c.f_max)
        self.ecapa = ECAPA_TDNN(
            input_size=c.n_mels,
            lin_neurons=c.lin_neurons,
            channels=list(c.channels),
            kernel_sizes=list(c.kernel_sizes),
            dilations=list(c.dilations),
            attention_channels=c.attention_channels,
            res2net_scale=c.res2net_scale,
            se_channels=c.se_channels,
        )

    def features(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log mel filterbanks with the utterance mean removed: [B, N] -> [B, T, n_mels]."""
        feats: torch.Tensor = self.fbank(wave)  # [B, T, n_mels], T = N // hop + 1
        mask = _frame_mask(lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)  # [B, T, 1]
        # Per-utterance mean normalisation removes the channel (microphone, phone line) and
        # most of the speaker's spectral tilt; padded frames must not enter the mean.
        mean = (feats * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)  # [B,1,F]
        return (feats - mean) * mask

    def embed(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, n_mels] -> [B, EMB]."""
        emb: torch.Tensor = self.ecapa(feats, lengths)  # [B, 1, EMB]
        return emb.squeeze(1)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.ones(wave.shape[0], device=wave.device)
        return self.embed(self.features(wave, lengths), lengths)


def prepare_wave(wave: npt.ArrayLike, sample_rate: int, min_seconds: float = 0.5) -> FloatArray:
    """Any mono float audio -> 16 kHz, edge silence trimmed, at least `min_seconds` long.

    Training applies the same steps, so features of live audio match what the encoder learnt.
    """
    x = np.nan_to_num(np.asarray(wave, dtype=np.float32).reshape(-1))
    x = trim_silence(resample_to_16k(x, sample_rate), TARGET_RATE)
    minimum = int(min_seconds * TARGET_RATE)
    if x.shape[0] < minimum:
        x = np.pad(x, (0, minimum - x.shape[0]))
    return np.ascontiguousarray(x, dtype=np.float32)


def pad_batch(waves: Sequence[FloatArray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros: ([B, N_max] waveforms, [B] lengths relative to N_max)."""
    longest = max(w.shape[0] for w in waves)
    batch = torch.zeros(len(waves), longest)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = torch.from_numpy(w)
    lengths = torch.tensor([w.shape[0] / longest for w in waves], dtype=torch.float32)
    return batch, lengths


def embed_waves(
    encoder: SpeechEncoder,
    waves: Sequence[FloatArray],
    device: torch.device,
    batch_size: int = 16,
) -> FloatArray:
    """Raw embeddings [N, EMB] of prepared 16 kHz waves, batched by similar length.

    ECAPA's convolutions pad by reflection, so zero padding after a short utterance changes its
    last frames' context; batches therefore only group utterances within MAX_PAD_RATIO of each
    other in length, which keeps an utterance's embedding (nearly) independent of its batch.
    """
    out = np.zeros((len(waves), encoder.config.lin_neurons), dtype=np.float32)
    order = sorted(range(len(waves)), key=lambda i: waves[i].shape[0])
    groups: list[list[int]] = []
    for i in order:
        if (
            groups
            and len(groups[-1]) < batch_size
            and waves[i].shape[0] <= MAX_PAD_RATIO * waves[groups[-1][0]].shape[0]
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    with torch.inference_mode():
        for idx in groups:
            batch, lengths = pad_batch([waves[i] for i in idx])
            emb = encoder(batch.to(device), lengths.to(device))  # [b, EMB]
            out[idx] = emb.float().cpu().numpy()
    return out


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """Training-set means and standard deviations used to standardize both feature parts."""

    embedding_mean: FloatArray
    embedding_std: FloatArray
    prosody_mean: FloatArray
    prosody_std: FloatArray

    @classmethod
    def fit(cls, embeddings: FloatArray, prosody: FloatArray) -> FeatureStats:
        def spread(x: FloatArray) -> FloatArray:
            deviation: FloatArray = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)
            return deviation

        return cls(
            embeddings.mean(axis=0).astype(np.float32),
            spread(embeddings),
            prosody.mean(axis=0).astype(np.float32),
            spread(prosody),
        )

    def combine(self, embeddings: FloatArray, prosody: FloatArray) -> FloatArray:
        """[N, EMB] raw embeddings + [N, PROSODY_DIM] raw prosody -> [N, SPEECH_DIM]."""
        emb = (embeddings - self.embedding_mean) / self.embedding_std
        pro = np.clip((prosody - self.prosody_mean) / self.prosody_std, -PROSODY_CLIP, PROSODY_CLIP)
        combined: FloatArray = np.concatenate([emb, pro], axis=1).astype(np.float32)
        return combined


def save_weights(
    path: Path,
    encoder: SpeechEncoder,
    stats: FeatureStats,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Store the encoder in half precision (the file stays ~1 MB) with its config and stats."""
    state = {
        k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
        for k, v in encoder.state_dict().items()
    }
    blob = {
        "format": WEIGHTS_FORMAT,
        "config": encoder.config.to_dict(),
        "state_dict": state,
        "embedding_mean": stats.embedding_mean.tolist(),
        "embedding_std": stats.embedding_std.tolist(),
        "prosody_mean": stats.prosody_mean.tolist(),
        "prosody_std": stats.prosody_std.tolist(),
        "metadata": metadata or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


class SpeechFeaturizer:
    """Inference wrapper: audio -> float32 [SPEECH_DIM] = concat(embedding, prosody), standardized.

    Both parts are standardized with statistics of the encoder's training actors, so each
    dimension is roughly zero-mean, unit-variance on speech like RAVDESS.
    """

    def __init__(
        self,
        device: torch.device | None = None,
        weights_path: Path | None = None,
        batch_size: int = 16,
    ) -> None:
        self.device = device if device is not None else select_device()
        self.weights_path = weights_path or WEIGHTS_PATH
        self.batch_size = batch_size
        self.weights_sha256 = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()
        blob = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        if blob.get("format") != WEIGHTS_FORMAT:
            raise ValueError(
                f"{self.weights_path}: unsupported weights format {blob.get('format')}"
            )
        config = SpeechConfig.from_dict(blob["config"])
        if config.lin_neurons != EMBEDDING_DIM:
            found = config.lin_neurons
            raise ValueError(f"{self.weights_path}: {found}-d embedding, expected {EMBEDDING_DIM}")
        self.encoder = SpeechEncoder(config)
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()
        }
        self.encoder.load_state_dict(state)
        self.encoder.to(self.device).eval()
        self.stats = FeatureStats(
            *(
                np.asarray(blob[k], dtype=np.float32)
                for k in ("embedding_mean", "embedding_std", "prosody_mean", "prosody_std")
            )
        )
        self.metadata: dict[str, Any] = dict(blob.get("metadata", {}))

    def featurize(self, wave: npt.ArrayLike, sample_rate: int) -> FloatArray:
        """Mono float audio (8 or 16 kHz, any length) -> [SPEECH_DIM]."""
        row: FloatArray = self.featurize_many([wave], sample_rate)[0]
        return row

    def featurize_many(
        self, waves: Sequence[npt.ArrayLike], sample_rate: int | Sequence[int]
    ) -> FloatArray:
        """A list of utterances (one rate for all, or one each) -> [N, SPEECH_DIM]."""
        rates = [sample_rate] * len(waves) if isinstance(sample_rate, int) else list(sample_rate)
        if len(rates) != len(waves):
            raise ValueError(f"{len(waves)} waves but {len(rates)} sample rates")
        if not waves:
            return np.zeros((0, SPEECH_DIM), dtype=np.float32)
        prepared = [
            prepare_wave(w, r, self.encoder.config.min_seconds)
            for w, r in zip(waves, rates, strict=True)
        ]
        prosody = np.stack([prosody_features(w) for w in prepared])  # [N, PROSODY_DIM]
        embeddings = embed_waves(self.encoder, prepared, self.device, self.batch_size)  # [N, EMB]
        return self.stats.combine(embeddings, prosody)
