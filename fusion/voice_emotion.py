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

Training copies every clip through the telephone path (8 kHz, 8-bit mu-law and back, in
`ravdess_voice_features` of training/ravdess.py), since Twilio callers arrive that way.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from fusion.audio import mulaw_decode, mulaw_encode, resample
from fusion.prosody import PROSODY_DIM
from fusion.speech import SPEECH_DIM

__all__ = [
    "ENCODER_DIM",
    "VOICE_EMOTION_DIM",
    "telephone_copy",
    "voice_emotion_vector",
]

FloatArray = npt.NDArray[np.float32]

ENCODER_DIM: Final = 384  # Whisper tiny.en's model width
VOICE_EMOTION_DIM: Final = ENCODER_DIM + PROSODY_DIM
TELEPHONE_RATE: Final = 8000


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
