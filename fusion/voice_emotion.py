"""What the emotion head hears in a spoken turn: Whisper's encoder states averaged over the
utterance, and the utterance's prosody.

    vector = voice_emotion_vector(transcript.encoder_mean, speech_features)  # [392] or None

The first 384 values are `fusion.asr.Transcript.encoder_mean` (Whisper tiny.en, the model
that transcribes the call); the last 8 are the standardized prosody at the end of the
`fusion.speech.SpeechFeaturizer` vector. Nothing in either was trained on RAVDESS, so a
leave-actors-out score over every RAVDESS actor is speaker-independent end to end; the
ECAPA embedding in the same featurizer vector was trained on actors 01-18 and is left to
the fusion model. In a call the encoder already ran for the transcript: the features cost a
mean over its states.

Training copies every clip through the telephone path (8 kHz, 8-bit mu-law and back), since
Twilio callers arrive that way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.audio import load_flac, mulaw_decode, mulaw_encode, resample
from fusion.prosody import PROSODY_DIM
from fusion.speech import (
    SPEECH_DIM,
    SpeechFeaturizer,
    default_cache_dir,
    prepare_wave,
    read_ravdess_index,
)
from fusion.understanding import file_sha256

if TYPE_CHECKING:
    from fusion.asr import SpeechRecognizer

__all__ = [
    "ENCODER_DIM",
    "VOICE_EMOTION_DIM",
    "ravdess_voice_features",
    "telephone_copy",
    "voice_emotion_vector",
]

FloatArray = npt.NDArray[np.float32]

ENCODER_DIM: Final = 384  # Whisper tiny.en's model width
VOICE_EMOTION_DIM: Final = ENCODER_DIM + PROSODY_DIM
TELEPHONE_RATE: Final = 8000
FEATURES_FORMAT: Final = 1


def voice_emotion_vector(
    encoder_mean: npt.ArrayLike | None, speech: npt.ArrayLike | None
) -> FloatArray | None:
    """[VOICE_EMOTION_DIM] from a transcript's encoder mean and the utterance's featurizer
    vector; None when either is missing (the emotion head then reads the text alone)."""
    if encoder_mean is None or speech is None:
        return None
    encoded = np.asarray(encoder_mean, dtype=np.float32).reshape(-1)
    features = np.asarray(speech, dtype=np.float32).reshape(-1)
    if encoded.shape[0] != ENCODER_DIM or features.shape[0] != SPEECH_DIM:
        raise ValueError(
            f"voice emotion features need a [{ENCODER_DIM}] encoder mean and [{SPEECH_DIM}] "
            f"speech features, got [{encoded.shape[0]}] and [{features.shape[0]}]"
        )
    return np.concatenate([encoded, features[-PROSODY_DIM:]]).astype(np.float32)


def telephone_copy(wave_16k: npt.ArrayLike) -> FloatArray:
    """16 kHz audio as a caller on the phone network is heard: 8 kHz, mu-law, back to 16 kHz."""
    narrow = resample(np.asarray(wave_16k, dtype=np.float32), 16000, TELEPHONE_RATE)
    return resample(mulaw_decode(mulaw_encode(narrow)), TELEPHONE_RATE, 16000)


def ravdess_voice_features(
    data_dir: Path,
    recognizer: SpeechRecognizer,
    featurizer: SpeechFeaturizer,
    *,
    telephone: bool = False,
    cache_dir: Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> FloatArray:
    """[N, VOICE_EMOTION_DIM] for the RAVDESS clips in labels.csv order (as
    `fusion.speech.ravdess_features`), each clip's edge silence trimmed as a VAD would cut it;
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
                f"format {FEATURES_FORMAT} telephone {telephone}",
                *(c.file for c in clips),
            ]
        ).encode()
    ).hexdigest()[:20]
    cache = (cache_dir or default_cache_dir()) / f"ravdess_voice_{key}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            cached: FloatArray = stored["X"].astype(np.float32)
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, X=x)
    tmp.replace(cache)
    return x
