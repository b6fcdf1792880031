"""RAVDESS for the trainers: the clip index and the features of every clip, cached under
var/cache/ by the models that computed them and the clip list.

- `ravdess_features`: the speech featuriser's vectors (`fusion.speech.SpeechFeaturizer`),
  which the fusion model and the simulator's sessions read;
- `ravdess_voice_features`: the emotion head's voice features (`fusion.voice_emotion`).

Labels are RAVDESS's own (`fusion.heads.labels.RAVDESS`).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.audio import load_flac
from fusion.heads.checkpoint import file_sha256
from fusion.speech import SPEECH_DIM, WEIGHTS_FORMAT, WEIGHTS_PATH, SpeechFeaturizer, prepare_wave
from fusion.training.data import CACHE_DIR
from fusion.voice_emotion import VOICE_EMOTION_DIM, telephone_copy, voice_emotion_vector

if TYPE_CHECKING:
    from fusion.asr import SpeechRecognizer

__all__ = [
    "RavdessClip",
    "SpeechTable",
    "ravdess_features",
    "ravdess_voice_features",
    "read_ravdess_index",
    "speech_table",
]

FloatArray = npt.NDArray[np.float32]

RAVDESS_DIR: Final = "ravdess_speech_16k_flac"  # inside the data folder
VOICE_FEATURES_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class RavdessClip:
    file: str  # path relative to the data folder, as in labels.csv
    emotion: str
    actor: int
    gender: str


def read_ravdess_index(data_dir: Path) -> list[RavdessClip]:
    """The clips listed in `labels.csv`, in file order."""
    with (data_dir / "labels.csv").open(newline="") as handle:
        return [
            RavdessClip(row["file"], row["emotion"], int(row["actor"]), row["gender"])
            for row in csv.DictReader(handle)
        ]


def _load(cache: Path) -> FloatArray | None:
    if not cache.exists():
        return None
    with np.load(cache) as stored:
        x: FloatArray = stored["X"].astype(np.float32)
        return x


def _store(cache: Path, x: FloatArray) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, X=x)
    tmp.replace(cache)


def _chunks(items: Sequence[RavdessClip], size: int) -> Iterator[Sequence[RavdessClip]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ravdess_features(
    data_dir: Path,
    featurizer: SpeechFeaturizer,
    cache_dir: Path = CACHE_DIR,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[FloatArray, list[str], npt.NDArray[np.int64], list[str]]:
    """(X [N, SPEECH_DIM] float32, emotion labels, actor ids [N], files) for RAVDESS clips.

    Cached under var/cache/ by the weights' hash and the clip list, so a retrained encoder never
    reuses stale features. `limit` takes the first clips of labels.csv (for quick checks).
    """
    clips = read_ravdess_index(data_dir)[:limit]
    files = [c.file for c in clips]
    key = hashlib.sha256(
        "\n".join([featurizer.weights_sha256, str(WEIGHTS_FORMAT), *files]).encode()
    ).hexdigest()[:20]
    cache = cache_dir / f"ravdess_speech_{key}.npz"
    labels = [c.emotion for c in clips]
    actors = np.asarray([c.actor for c in clips], dtype=np.int64)
    cached = _load(cache)
    if cached is not None:
        return cached, labels, actors, files

    parts: list[FloatArray] = []
    chunk = max(1, featurizer.batch_size * 4)
    with tqdm(total=len(clips), desc="RAVDESS speech features", disable=not progress) as bar:
        for group in _chunks(clips, chunk):
            loaded = [load_flac(data_dir / c.file) for c in group]
            parts.append(featurizer.featurize_many([w for w, _ in loaded], [r for _, r in loaded]))
            bar.update(len(group))
    x = np.concatenate(parts) if parts else np.zeros((0, SPEECH_DIM), dtype=np.float32)
    _store(cache, x)
    return x, labels, actors, files


def ravdess_voice_features(
    data_dir: Path,
    recognizer: SpeechRecognizer,
    featurizer: SpeechFeaturizer,
    *,
    telephone: bool = False,
    cache_dir: Path = CACHE_DIR,
    limit: int | None = None,
    progress: bool = True,
) -> FloatArray:
    """[N, VOICE_EMOTION_DIM] for the RAVDESS clips in labels.csv order (as
    `ravdess_features`), each clip's edge silence trimmed as a VAD would cut it;
    `telephone`: through `telephone_copy` first.

    Cached under var/cache/ by both models' hashes, the encoder window and the clip list.
    """
    clips = read_ravdess_index(data_dir)[:limit]
    key = hashlib.sha256(
        "\n".join(
            [
                file_sha256(recognizer.model_path / "model.bin"),
                str(recognizer.config.encoder_pad_s),
                featurizer.weights_sha256,
                f"format {VOICE_FEATURES_FORMAT} telephone {telephone}",
                *(c.file for c in clips),
            ]
        ).encode()
    ).hexdigest()[:20]
    cache = cache_dir / f"ravdess_voice_{key}.npz"
    cached = _load(cache)
    if cached is not None:
        return cached

    rows: list[FloatArray] = []
    desc = "RAVDESS voice features" + (" (telephone)" if telephone else "")
    for clip in tqdm(clips, desc=desc, disable=not progress):
        wave, rate = load_flac(data_dir / clip.file)
        wave = prepare_wave(wave, rate)
        if telephone:
            wave = telephone_copy(wave)
        speech = featurizer.featurize_many([wave], 16000)[0]
        vector = voice_emotion_vector(recognizer.encoder_mean(wave), speech)
        if vector is None:
            raise ValueError(f"{clip.file} is too short for the speech recognizer's encoder")
        rows.append(vector)
    x = np.stack(rows) if rows else np.zeros((0, VOICE_EMOTION_DIM), dtype=np.float32)
    _store(cache, x)
    return x


@dataclass(frozen=True, slots=True)
class SpeechTable:
    features: FloatArray  # [clips, S]
    emotions: tuple[str, ...]  # RAVDESS label per clip
    actors: tuple[int, ...]
    genders: tuple[str, ...]
    source: dict[str, Any]  # what produced the features (recorded in the model card)


def speech_table(data_dir: Path, device: torch.device, progress: bool = True) -> SpeechTable:
    """Speech features of the RAVDESS clips (`data_dir` / RAVDESS_DIR) from the shipped
    speech featuriser."""
    if not WEIGHTS_PATH.exists():
        raise SystemExit(
            f"{WEIGHTS_PATH} is missing: train it first (python -m fusion.training.speech_encoder)"
        )
    ravdess = data_dir / RAVDESS_DIR
    featurizer = SpeechFeaturizer(device)
    x, emotions, actors, files = ravdess_features(ravdess, featurizer, progress=progress)
    gender_of = {c.file: c.gender for c in read_ravdess_index(ravdess)}
    source = {
        "featurizer": "fusion.speech.SpeechFeaturizer",
        "weights": WEIGHTS_PATH.name,
        "weights_sha256": featurizer.weights_sha256,
        "dim": int(x.shape[1]),
        # Actors whose clips the speech encoder never trained on: emotion figures on the other
        # actors' clips are optimistic (the encoder saw those clips with their labels).
        "unseen_actors": [int(a) for a in featurizer.metadata.get("val_actors", [])],
    }
    return SpeechTable(
        x.astype(np.float32),
        tuple(emotions),
        tuple(int(a) for a in actors),
        tuple(gender_of[f] for f in files),
        source,
    )
