"""The speech side every call shares: VAD, end-of-turn model, recognizer, speech featurizer
and synthesizer.

Loaded once per server (or handed in, as tests do to share them between servers). Model
work never runs on the event loop except the VAD, whose 32 ms windows cost about 0.1 ms:
the recognizer has its own worker pool, the featurizer and the end-of-turn model a
micro-batcher thread each, and the synthesizer a subprocess per sentence. How calls listen
(the VAD's settings and the turn policy) is part of this configuration, so servers that share
these models listen alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from assistant.voice.synthesis import TextToSpeech, select_tts
from assistant.voice.turns import TurnPolicy
from fusion import BatcherConfig, MicroBatcher, Overloaded, select_device
from fusion.asr import AsrConfig, SpeechRecognizer
from fusion.speech import SpeechFeaturizer
from fusion.turn_model import TurnModel, TurnModelConfig
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
    # In the model mode the VAD's pause is the check and its end silence the longest wait
    # (assistant/app/runtime.py builds both from the settings).
    turns: TurnPolicy = field(default_factory=TurnPolicy)
    turn_model: TurnModelConfig = field(default_factory=TurnModelConfig)
    # One forward costs about 120 ms of one core and a batch as much per clip, so a
    # short queue: beyond it a pause falls back to the silence rule.
    turn_batch: BatcherConfig = field(
        default_factory=lambda: BatcherConfig(max_batch=4, max_queue=16)
    )


class VoiceModels:
    """`start`/`stop` own the recognizer's pool and the featurizer's batcher."""

    def __init__(
        self,
        config: VoiceModelsConfig,
        vad: VadModel,
        recognizer: SpeechRecognizer,
        featurizer: SpeechFeaturizer,
        tts: TextToSpeech | None,
        turn_model: TurnModel | None = None,
    ) -> None:
        self.config = config
        self.vad = vad
        self.recognizer = recognizer
        self.featurizer = featurizer
        self.tts = tts
        self.turn_model = turn_model
        self._features: MicroBatcher[FloatArray, FloatArray] | None = None
        self._turns: MicroBatcher[FloatArray, float] | None = None
        self.turn_fallbacks = 0  # pauses the model could not judge (overloaded, stopped)
        self._owner: VoiceModels | None = None  # set on a view made by `sharing`

    @classmethod
    def load(
        cls, config: VoiceModelsConfig | None = None, *, turn_model: bool | None = None
    ) -> VoiceModels:
        """Load every model (blocking: seconds); nothing is fetched from a model hub. The
        end-of-turn model is loaded when `turn_model` says so, by default when the config's
        turn policy is the model mode (views made by `sharing` may listen by either mode)."""
        cfg = config or VoiceModelsConfig()
        with_turns = cfg.turns.detection == "model" if turn_model is None else turn_model
        return cls(
            cfg,
            VadModel(),
            SpeechRecognizer(cfg.asr),
            SpeechFeaturizer(select_device(cfg.device)),
            select_tts(cfg.tts),
            TurnModel(cfg.turn_model) if with_turns else None,
        )

    def sharing(self, config: VoiceModelsConfig) -> VoiceModels:
        """These loaded models, listening by another configuration: its VAD settings, turn
        policy and speculation (a server with other turn-taking settings, without loading the
        weights twice). The recognizer, featurizer, synthesizer and end-of-turn model stay
        these (the others' settings in `config` are not read); the view starts and stops
        only its own batchers, and this object must be started first and stopped last. A
        view in the model mode over models loaded without the end-of-turn model ends pauses
        by the silence rule."""
        view = VoiceModels(
            config, self.vad, self.recognizer, self.featurizer, self.tts, self.turn_model
        )
        view._owner = self
        return view

    def start(self) -> None:
        if self._owner is None:
            self.recognizer.start()
        if self._features is None:
            self._features = MicroBatcher(
                self._featurize, self.config.features, name="speech-features"
            )
            self._features.start()
        if self._turns is None and self.turn_model is not None:
            self._turns = MicroBatcher(
                self.turn_model.probabilities, self.config.turn_batch, name="turn-model"
            )
            self._turns.start()

    async def stop(self) -> None:
        features, self._features = self._features, None
        turns, self._turns = self._turns, None
        if features is not None:
            await features.stop()
        if turns is not None:
            await turns.stop()
        if self._owner is None:
            await self.recognizer.stop()

    @property
    def turn_batcher(self) -> MicroBatcher[FloatArray, float] | None:
        return self._turns

    async def turn_probability(self, audio: FloatArray) -> float | None:
        """The end-of-turn model's probability that the caller has finished `audio` (16 kHz,
        the utterance so far); None when it cannot answer now (no model, overloaded): the
        caller then applies the silence rule."""
        turns = self._turns
        if turns is None:
            return None
        try:
            return await turns.submit(audio)
        except Overloaded:
            self.turn_fallbacks += 1
            # One line for the first and then one per hundred: a burst must not flood the log.
            if self.turn_fallbacks % 100 == 1:
                log.warning(
                    "end-of-turn model overloaded: %d pauses so far ended by silence instead",
                    self.turn_fallbacks,
                )
            return None

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
