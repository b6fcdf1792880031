"""The heads' inference wrapper: intent and emotion for a batch of messages, as the server
asks for them.

    understanding = Understanding.load(device)      # fusion/weights/intent.pt + emotion.pt
    results = understanding.predict_many(text_vecs, profile_vecs, speech_vecs, texts)

Confidences are temperature-scaled on validation data (docs/understanding.md). The modules
(`fusion.heads.modules`), their training (training/heads/) and this wrapper are kept
apart; nothing here reads data sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from fusion.heads.checkpoint import (
    EMOTION_WEIGHTS,
    INTENT_WEIGHTS,
    IntentArtifact,
    file_sha256,
    load_emotion,
    load_intent,
)
from fusion.heads.labels import OUT_OF_SCOPE, SERVICE_EMOTIONS
from fusion.heads.modules import EmotionModel
from fusion.heads.serving import HeadOutputs, ServingHeads
from fusion.inference import WEIGHTS_PATH as FUSION_WEIGHTS
from fusion.vectors import stack_rows

if TYPE_CHECKING:
    from fusion.heads.graph import GraphHeads

__all__ = ["Understanding", "UnderstandingResult"]

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class UnderstandingResult:
    intent: str  # a Banking77 intent or OUT_OF_SCOPE
    intent_confidence: float  # calibrated probability of `intent`
    top2: tuple[tuple[str, float], ...]  # the two likeliest in-scope intents
    emotion: str  # one of SERVICE_EMOTIONS
    emotion_scores: dict[str, float]  # calibrated, sums to 1

    @property
    def out_of_scope(self) -> bool:
        return self.intent == OUT_OF_SCOPE


class Understanding:
    """Both heads in eval mode on one device; thread-compatible (no state per call).

    On a CPU the heads run as ONNX Runtime graphs (`fusion.heads.graph`) unless `graph` is
    off, the intent's largest layers in 8 bits unless `quantize` is off; elsewhere, or
    without `graph`, through `ServingHeads`."""

    def __init__(
        self,
        intent: IntentArtifact,
        emotion: EmotionModel,
        device: torch.device,
        profile_space: str | None = None,
        *,
        graph: bool = True,
        quantize: bool = True,
    ) -> None:
        self.device = device
        self.intent_model = intent.model.to(device).eval()
        self.emotion_model = emotion.to(device).eval()
        serving = ServingHeads(self.intent_model, intent.temperature, self.emotion_model, device)
        self.graph: GraphHeads | None = None
        self.serving: ServingHeads | None = serving
        if graph and device.type == "cpu":
            # Imported here: onnx and ONNX Runtime load only where they serve.
            from fusion.heads.graph import GraphHeads

            self.graph = GraphHeads(serving, quantize=quantize)
            self.serving = None  # its constants live on in the graphs
        self.intents = intent.intents
        self.temperature = intent.temperature
        self.oos_threshold = intent.oos_threshold
        # A profile from another fusion model lives in another space: ignore it (the
        # unconditioned path) rather than feed the FiLM generator vectors it never saw.
        self.use_profile = (
            intent.profile_space is None
            or profile_space is None
            or profile_space == intent.profile_space
        )
        self.profile_dim = intent.model.film.config.profile_dim
        self.speech_dim = emotion.speech.config.in_dim

    @classmethod
    def load(
        cls,
        device: torch.device | None = None,
        intent_path: Path = INTENT_WEIGHTS,
        emotion_path: Path = EMOTION_WEIGHTS,
        fusion_path: Path | None = FUSION_WEIGHTS,
    ) -> Understanding:
        """Shipped weights, offline. `fusion_path`: the fusion weights whose profile vectors
        the server will pass (checked against the space the intent head learned)."""
        space = (
            file_sha256(fusion_path) if fusion_path is not None and fusion_path.exists() else None
        )
        emotion, _ = load_emotion(emotion_path)
        return cls(load_intent(intent_path), emotion, device or torch.device("cpu"), space)

    def _rows(
        self, vecs: Sequence[Vector | None] | None, n: int, dim: int, name: str
    ) -> tuple[Vector | None, npt.NDArray[np.bool_] | None]:
        """The messages' vectors [n, dim] (zeros where a message has none) and which messages
        have one [n]: (None, None) when none does, presence None when all do."""
        if vecs is None:
            return None, None
        if len(vecs) != n:
            raise ValueError(f"{len(vecs)} {name} vectors for {n} messages")
        if n == 1 and vecs[0] is not None:  # a lone message, the server's common case
            return stack_rows(vecs, dim, name), None
        present = [v is not None for v in vecs]
        count = sum(present)
        if not count:
            return None, None
        out = stack_rows(vecs, dim, name)
        return out, (None if count == n else np.array(present))

    def outputs(
        self,
        text: Vector,
        profile: Vector | None,
        has_profile: npt.NDArray[np.bool_] | None,
        speech: Vector | None,
        has_speech: npt.NDArray[np.bool_] | None,
        texts: Sequence[str] | None,
    ) -> HeadOutputs:
        """Both heads on this device's path. `text` [B, D]; `profile` [B, P] or None when no
        row has one, `has_profile` [B] or None when every row does; the same for `speech`."""
        if not self.use_profile:
            profile = has_profile = None
        heads = self.graph or self.serving
        assert heads is not None
        return heads.run(text, profile, has_profile, speech, has_speech, texts)

    def intent_probs(
        self,
        text: Vector,
        profile: Vector | None = None,
        present: npt.NDArray[np.bool_] | None = None,
        texts: Sequence[str] | None = None,
    ) -> Vector:
        """[B, 78] calibrated probabilities (77 intents, then out-of-scope), as served;
        `present` [B] marks the rows whose profile counts (all of them when None);
        `texts` as in `predict_many`."""
        if profile is not None and present is not None and not present.any():
            profile = present = None
        return self.outputs(text, profile, present, None, None, texts).intent

    def predict_many(
        self,
        text_vecs: npt.ArrayLike,
        profile_vecs: Sequence[Vector | None] | None = None,
        speech_vecs: Sequence[Vector | None] | None = None,
        texts: Sequence[str] | None = None,
    ) -> list[UnderstandingResult]:
        """One batched forward of both heads. `text_vecs` [N, 384]; per message, a profile
        vector [128] and voice features [392] (`fusion.voice_emotion`) or None; `texts`: the
        messages themselves, for the heads' lexical cues (without them each head reads the
        embedding alone, which is less accurate)."""
        text = np.asarray(text_vecs, dtype=np.float32).reshape(
            -1, self.intent_model.trunk.config.in_dim
        )
        n = text.shape[0]
        if n == 0:
            return []
        profile, has_profile = self._rows(profile_vecs, n, self.profile_dim, "profile")
        speech, has_speech = self._rows(speech_vecs, n, self.speech_dim, "speech")
        out = self.outputs(text, profile, has_profile, speech, has_speech, texts)
        assert out.emotion is not None and out.decision is not None
        in_scope = out.intent[:, :-1]
        top = np.argsort(-in_scope, axis=1, kind="stable")[:, :2]
        # Python lists from here: per-element array access costs more than the heads.
        results = []
        for row, p, oos, label, score in zip(
            top.tolist(),
            in_scope[np.arange(n)[:, None], top].tolist(),
            out.intent[:, -1].tolist(),
            out.decision.argmax(axis=1).tolist(),
            out.emotion.tolist(),
            strict=True,
        ):
            # Out of scope wins the argmax only when it beats the best intent outright.
            out_of_scope = oos > p[0] or p[0] < self.oos_threshold
            results.append(
                UnderstandingResult(
                    intent=OUT_OF_SCOPE if out_of_scope else self.intents[row[0]],
                    intent_confidence=1.0 - p[0] if out_of_scope else p[0],
                    top2=tuple((self.intents[i], q) for i, q in zip(row, p, strict=True)),
                    emotion=SERVICE_EMOTIONS[label],
                    emotion_scores=dict(zip(SERVICE_EMOTIONS, score, strict=True)),
                )
            )
        return results
