"""The speech side every call shares: VAD, recognizer, speech featurizer and synthesizer.

Loaded once per server (or handed in, as tests do to share them between servers). Model
work never runs on the event loop except the VAD, whose 32 ms windows cost about 0.1 ms:
the recognizer has its own worker pool, the featurizer a micro-batcher thread, and the
synthesizer a subprocess per sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from assistant.voice.synthesis import TextToSpeech, select_tts
from fusion import BatcherConfig, MicroBatcher, Overloaded, select_device
from fusion.asr import AsrConfig, SpeechRecognizer
from fusion.speech import SpeechFeaturizer
from fusion.vad import SAMPLE_RATE, VadConfig, VadModel

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VoiceModelsConfig:
    tts: str = "espeak"  # espeak | none
    asr: AsrConfig = field(default_factory=AsrConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    # Where the speech featurizer runs: auto | cpu | cuda.
    device: str = "auto"
    features: BatcherConfig = field(default_factory=lambda: BatcherConfig(max_batch=16))
    # Start transcribing at the first pause instead of at the end of the turn.
    speculate: bool = True


class VoiceModels:
    """`start`/`stop` own the recognizer's pool and the featurizer's batcher."""

    def __init__(
        self,
        config: VoiceModelsConfig,
        vad: VadModel,
        recognizer: SpeechRecognizer,
        featurizer: SpeechFeaturizer,
        tts: TextToSpeech | None,
    ) -> None:
        self.config = config
        self.vad = vad
        self.recognizer = recognizer
        self.featurizer = featurizer
        self.tts = tts
        self._features: MicroBatcher[FloatArray, FloatArray] | None = None

    @classmethod
    def load(cls, config: VoiceModelsConfig | None = None) -> VoiceModels:
        """Load every model (blocking: seconds); nothing is fetched from a model hub."""
        cfg = config or VoiceModelsConfig()
        return cls(
            cfg,
            VadModel(),
            SpeechRecognizer(cfg.asr),
            SpeechFeaturizer(select_device(cfg.device)),
            select_tts(cfg.tts),
        )

    def start(self) -> None:
        self.recognizer.start()
        if self._features is None:
            self._features = MicroBatcher(
                self._featurize, self.config.features, name="speech-features"
            )
            self._features.start()

    async def stop(self) -> None:
        features, self._features = self._features, None
        if features is not None:
            await features.stop()
        await self.recognizer.stop()

    def _featurize(self, waves: Sequence[FloatArray]) -> list[FloatArray]:
        return list(self.featurizer.featurize_many(list(waves), SAMPLE_RATE))

    async def speech_features(self, audio: FloatArray) -> FloatArray | None:
        """[SPEECH_DIM] features of one 16 kHz utterance; None when they cannot be had now
        (the turn then goes on without them, as a typed message would)."""
        if self._features is None:
            raise RuntimeError("VoiceModels.start() has not been called")
        try:
            return await self._features.submit(audio)
        except Overloaded:
            log.warning("speech featurizer overloaded: a turn goes without speech features")
            return None
