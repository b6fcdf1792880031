"""Intent and emotion heads over the text embedding, the user's profile and speech features.

    understanding = Understanding.load(device)      # fusion/weights/intent.pt + emotion.pt
    results = understanding.predict_many(text_vecs, profile_vecs, speech_vecs)

- **Intent**: an ensemble of one-hidden-layer MLPs over the 384-d MiniLM embedding (77
  Banking77 intents + out-of-scope), whose hidden layer is modulated (FiLM) by the 128-d
  profile vector. The FiLM generator is trained after the MLPs, with the MLPs frozen, and
  its modulation is exactly the identity when the profile is absent: a new user gets the
  text-only model, bit for bit.
- **Emotion**: a text head over GoEmotions' 28 labels and a speech head over RAVDESS's 8,
  each mapped onto the service emotions (`SERVICE_EMOTIONS`, mappings below), combined as a
  weighted product of experts when both are present.
- Confidences are temperature-scaled on validation data (docs/understanding.md).

The model, its training (`fusion.train_understanding`) and this inference wrapper are kept
apart; nothing here reads data sets.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INTENT_WEIGHTS = WEIGHTS_DIR / "intent.pt"
EMOTION_WEIGHTS = WEIGHTS_DIR / "emotion.pt"
FUSION_WEIGHTS = WEIGHTS_DIR / "fusion.pt"
WEIGHTS_FORMAT = 1
OUT_OF_SCOPE = "out_of_scope"
Vector = npt.NDArray[np.float32]

SERVICE_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "satisfied",
    "confused",
    "anxious",
    "sad",
    "frustrated",
    "angry",
)

# GoEmotions' 28 labels -> service emotions. Positive labels all read as a customer who is
# content; curiosity and realization are the neutral information-seeking of a service chat;
# disappointment and disapproval are aimed at an outcome (frustrated), anger and disgust at
# the company (angry); embarrassment and remorse are the sad, self-directed ones.
GOEMOTIONS_TO_SERVICE: dict[str, str] = {
    "admiration": "satisfied",
    "amusement": "satisfied",
    "anger": "angry",
    "annoyance": "frustrated",
    "approval": "satisfied",
    "caring": "satisfied",
    "confusion": "confused",
    "curiosity": "neutral",
    "desire": "neutral",
    "disappointment": "frustrated",
    "disapproval": "frustrated",
    "disgust": "angry",
    "embarrassment": "sad",
    "excitement": "satisfied",
    "fear": "anxious",
    "gratitude": "satisfied",
    "grief": "sad",
    "joy": "satisfied",
    "love": "satisfied",
    "nervousness": "anxious",
    "optimism": "satisfied",
    "pride": "satisfied",
    "realization": "neutral",
    "relief": "satisfied",
    "remorse": "sad",
    "sadness": "sad",
    "surprise": "confused",
    "neutral": "neutral",
}

# GoEmotions' own Ekman grouping (the data set's ekman/ files), used for the Ekman-7 figures.
GOEMOTIONS_TO_EKMAN: dict[str, str] = {
    "admiration": "joy",
    "amusement": "joy",
    "anger": "anger",
    "annoyance": "anger",
    "approval": "joy",
    "caring": "joy",
    "confusion": "surprise",
    "curiosity": "surprise",
    "desire": "joy",
    "disappointment": "sadness",
    "disapproval": "anger",
    "disgust": "disgust",
    "embarrassment": "sadness",
    "excitement": "joy",
    "fear": "fear",
    "gratitude": "joy",
    "grief": "sadness",
    "joy": "joy",
    "love": "joy",
    "nervousness": "fear",
    "optimism": "joy",
    "pride": "joy",
    "realization": "surprise",
    "relief": "joy",
    "remorse": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
EKMAN: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")

# RAVDESS's emotion codes 01..08 in code order (as `fusion.speech.EMOTIONS`).
RAVDESS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)

# RAVDESS's 8 acted emotions -> service emotions. Calm is a quiet neutral; disgust in these
# recordings is contempt more than rage, the tone of a customer fed up with an outcome; the
# rising, questioning "surprised" delivery is the closest to a caller who does not follow.
RAVDESS_TO_SERVICE: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "satisfied",
    "sad": "sad",
    "angry": "angry",
    "fearful": "anxious",
    "disgust": "frustrated",
    "surprised": "confused",
}


def mapping_matrix(
    source: Sequence[str], target: Sequence[str], mapping: Mapping[str, str]
) -> Vector:
    """[len(source), len(target)] 0/1 matrix: p_target = p_source @ M."""
    out = np.zeros((len(source), len(target)), dtype=np.float32)
    for i, name in enumerate(source):
        out[i, target.index(mapping[name])] = 1.0
    return out


# ---------------------------------------------------------------------------- modules


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    members: int = 5
    in_dim: int = 384
    hidden: int = 1024
    out_dim: int = 78
    dropout: float = 0.3
    input_dropout: float = 0.1
    # MiniLM embeddings are unit vectors (entries ~ 1/sqrt(384)); rescaling them to unit
    # variance lets the default initialisation and learning rate fit them.
    input_scale: float = math.sqrt(384)


class EnsembleMLP(nn.Module):
    """M independent one-hidden-layer MLPs as one batched matmul: [B, D] -> [M, B, C].

    Members are trained one at a time (M = 1) and stacked with `stack` for inference.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.w1 = nn.Parameter(torch.empty(c.members, c.in_dim, c.hidden))  # [M, D, H]
        self.b1 = nn.Parameter(torch.zeros(c.members, 1, c.hidden))  # [M, 1, H]
        self.w2 = nn.Parameter(torch.empty(c.members, c.hidden, c.out_dim))  # [M, H, C]
        self.b2 = nn.Parameter(torch.zeros(c.members, 1, c.out_dim))  # [M, 1, C]
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
        self.drop_in = nn.Dropout(c.input_dropout)
        self.drop = nn.Dropout(c.dropout)
        self.act = nn.GELU()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [M, B, H]."""
        x = self.drop_in(x * self.config.input_scale)
        h: torch.Tensor = self.act(torch.matmul(x.unsqueeze(0), self.w1) + self.b1)
        return h

    def out(self, h: torch.Tensor) -> torch.Tensor:
        """[M, B, H] -> [M, B, C]."""
        return torch.matmul(self.drop(h), self.w2) + self.b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))

    @classmethod
    def stack(cls, members: Sequence[EnsembleMLP]) -> EnsembleMLP:
        total = sum(m.config.members for m in members)
        config = EnsembleConfig(**{**asdict(members[0].config), "members": total})
        out = cls(config)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in members]))
        return out


@dataclass(frozen=True, slots=True)
class FiLMConfig:
    profile_dim: int = 128
    hidden: int = 128
    target: int = 1024  # the MLP's hidden width
    dropout: float = 0.1
    # Also add a profile-dependent bias to the output logits (0: no bias): behaviour evidence
    # for one intent then needs no detour through the hidden units.
    classes: int = 0


class FiLM(nn.Module):
    """Profile [B, P] and presence [B] -> (gamma, beta) [B, H] and a logit bias [B, C];
    (1, 0, 0) where absent.

    The last layer starts at zero, so training starts from the unconditioned model.
    """

    def __init__(self, config: FiLMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(
            nn.Linear(c.profile_dim, c.hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, 2 * c.target + c.classes),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(
        self, profile: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        on = present.to(profile.dtype).unsqueeze(-1)  # [B, 1]
        out = self.net(profile * on)  # [B, 2H + C]
        h = self.config.target
        d_gamma, beta, bias = out[:, :h], out[:, h : 2 * h], out[:, 2 * h :]
        return 1.0 + on * d_gamma, on * beta, on * bias


class IntentModel(nn.Module):
    """Text [B, 384], profile [B, 128], presence [B] -> logits [M, B, 78]."""

    def __init__(self, trunk: EnsembleConfig, film: FiLMConfig) -> None:
        super().__init__()
        self.trunk = EnsembleMLP(trunk)
        self.film = FiLM(film)

    def forward(
        self, text: torch.Tensor, profile: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        h = self.trunk.hidden(text)  # [M, B, H]
        gamma, beta, bias = self.film(profile, present)  # [B, H], [B, H], [B, C or 0]
        logits = self.trunk.out(h * gamma + beta)  # [M, B, C]
        return logits + bias if bias.shape[-1] else logits


# ---------------------------------------------------------------------------- calibration


def expected_calibration_error(
    probs: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]], bins: int = 15
) -> float:
    """ECE of the top-1 confidence over equal-width bins (Guo et al. 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.mean()) * abs(float(correct[inside].mean() - conf[inside].mean()))
    return total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature minimising the NLL of `logits` [N, C] (or [M, N, C]: member average)."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        probs = torch.softmax(logits / log_t.exp(), dim=-1)
        if probs.dim() == 3:
            probs = probs.mean(dim=0)
        loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call, unused-ignore]
    return float(log_t.detach().exp())


# ---------------------------------------------------------------------------- checkpoints


def _half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().half() if v.is_floating_point() else v for k, v in state.items()}


def _float(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def save_blob(path: Path, blob: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": WEIGHTS_FORMAT, **blob}, tmp)
    tmp.replace(path)


def _load_blob(path: Path) -> dict[str, Any]:
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: unsupported weights format {blob.get('format')}")
    return blob


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class IntentArtifact:
    model: IntentModel
    intents: tuple[str, ...]  # 77 Banking77 intents then OUT_OF_SCOPE
    temperature: float
    # Below this calibrated probability of the best in-scope intent, the turn is out of scope.
    oos_threshold: float
    # sha256 of the fusion weights whose profile space the FiLM generator learned; None: any.
    profile_space: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_intent(path: Path, art: IntentArtifact) -> None:
    save_blob(
        path,
        {
            "trunk": asdict(art.model.trunk.config),
            "film": asdict(art.model.film.config),
            "state_dict": _half(art.model.state_dict()),
            "intents": list(art.intents),
            "temperature": art.temperature,
            "oos_threshold": art.oos_threshold,
            "profile_space": art.profile_space,
            "metadata": art.metadata,
        },
    )


def load_intent(path: Path = INTENT_WEIGHTS) -> IntentArtifact:
    blob = _load_blob(path)
    model = IntentModel(EnsembleConfig(**blob["trunk"]), FiLMConfig(**blob["film"]))
    model.load_state_dict(_float(blob["state_dict"]))
    return IntentArtifact(
        model.eval(),
        tuple(blob["intents"]),
        float(blob["temperature"]),
        float(blob["oos_threshold"]),
        blob.get("profile_space"),
        dict(blob.get("metadata", {})),
    )


class EmotionModel(nn.Module):
    """Text [B, 384] and speech [B, S] -> calibrated service-emotion log-probabilities [B, 7].

    Each expert's member-averaged, temperature-scaled distribution over its own labels is
    summed into the service emotions; with both present, `w_text * log p_text + w_speech *
    log p_speech + bias`, renormalised (a weighted product of experts).
    """

    def __init__(self, text: EnsembleConfig, speech: EnsembleConfig) -> None:
        super().__init__()
        self.text = EnsembleMLP(text)
        self.speech = EnsembleMLP(speech)
        n = len(SERVICE_EMOTIONS)
        self.register_buffer("text_map", torch.zeros(text.out_dim, n))  # [28, 7]
        self.register_buffer("speech_map", torch.zeros(speech.out_dim, n))  # [8, 7]
        # temperatures (text, speech); fusion weights (text, speech); fusion bias [7];
        # decision offsets [7] added to text-only log-probabilities before the argmax.
        self.register_buffer("temperature", torch.ones(2))
        self.register_buffer("fusion_weight", torch.ones(2))
        self.register_buffer("fusion_bias", torch.zeros(n))
        self.register_buffer("text_offsets", torch.zeros(n))
        # Standardisation of the speech features, from the training clips.
        self.register_buffer("speech_mean", torch.zeros(speech.in_dim))
        self.register_buffer("speech_std", torch.ones(speech.in_dim))

    def _expert(self, mlp: EnsembleMLP, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(mlp(x) / t, dim=-1).mean(dim=0)  # [B, C]

    def text_probs(self, text: torch.Tensor) -> torch.Tensor:
        """[B, 384] -> [B, 28] calibrated GoEmotions probabilities."""
        return self._expert(self.text, text, self.get_buffer("temperature")[0])

    def speech_probs(self, speech: torch.Tensor) -> torch.Tensor:
        """[B, S] raw speech features -> [B, 8] calibrated RAVDESS probabilities."""
        z = (speech - self.get_buffer("speech_mean")) / self.get_buffer("speech_std")
        return self._expert(self.speech, z, self.get_buffer("temperature")[1])

    def fuse(self, log_text: torch.Tensor, log_speech: torch.Tensor) -> torch.Tensor:
        """Service log-probabilities [B, 7] of both experts -> fused [B, 7]."""
        w = self.get_buffer("fusion_weight")
        logits = w[0] * log_text + w[1] * log_speech + self.get_buffer("fusion_bias")
        return torch.log_softmax(logits, dim=-1)

    def forward(
        self, text: torch.Tensor, speech: torch.Tensor, has_speech: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (log-probabilities [B, 7], decision scores [B, 7])."""
        log_text = (self.text_probs(text) @ self.get_buffer("text_map")).clamp_min(1e-6).log()
        decision = log_text + self.get_buffer("text_offsets")
        if not bool(has_speech.any()):
            return log_text, decision
        log_speech = (self.speech_probs(speech) @ self.get_buffer("speech_map")).clamp_min(1e-6)
        fused = self.fuse(log_text, log_speech.log())
        on = has_speech.unsqueeze(-1)
        return torch.where(on, fused, log_text), torch.where(on, fused, decision)


def save_emotion(path: Path, model: EmotionModel, metadata: Mapping[str, Any]) -> None:
    save_blob(
        path,
        {
            "text": asdict(model.text.config),
            "speech": asdict(model.speech.config),
            "state_dict": _half(model.state_dict()),
            "emotions": list(SERVICE_EMOTIONS),
            "metadata": dict(metadata),
        },
    )


def load_emotion(path: Path = EMOTION_WEIGHTS) -> tuple[EmotionModel, dict[str, Any]]:
    blob = _load_blob(path)
    if tuple(blob["emotions"]) != SERVICE_EMOTIONS:
        raise ValueError(f"{path}: emotions {blob['emotions']} differ from {SERVICE_EMOTIONS}")
    model = EmotionModel(EnsembleConfig(**blob["text"]), EnsembleConfig(**blob["speech"]))
    state = _float(blob["state_dict"])
    # Buffers that set the decision are kept in full precision (fp16 rounding of a
    # temperature or offset would move outputs for no size gain).
    model.load_state_dict(state)
    return model.eval(), dict(blob.get("metadata", {}))


# ---------------------------------------------------------------------------- inference


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
    """Both heads in eval mode on one device; thread-compatible (no state per call)."""

    def __init__(
        self,
        intent: IntentArtifact,
        emotion: EmotionModel,
        device: torch.device,
        profile_space: str | None = None,
    ) -> None:
        self.device = device
        self.intent_model = intent.model.to(device).eval()
        self.emotion_model = emotion.to(device).eval()
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = np.zeros((n, dim), dtype=np.float32)
        present = np.zeros(n, dtype=np.bool_)
        if vecs is not None:
            if len(vecs) != n:
                raise ValueError(f"{len(vecs)} {name} vectors for {n} messages")
            for i, v in enumerate(vecs):
                if v is None:
                    continue
                arr = np.asarray(v, dtype=np.float32).reshape(-1)
                if arr.shape[0] != dim:
                    raise ValueError(f"{name} vector has {arr.shape[0]} values, expected {dim}")
                out[i], present[i] = arr, True
        return torch.from_numpy(out).to(self.device), torch.from_numpy(present).to(self.device)

    @torch.inference_mode()
    def intent_probs(
        self, text: torch.Tensor, profile: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """[B, 78] calibrated probabilities (77 intents, then out-of-scope)."""
        if not self.use_profile:
            present = torch.zeros_like(present)
        logits = self.intent_model(text, profile, present)  # [M, B, 78]
        return torch.softmax(logits.float() / self.temperature, dim=-1).mean(dim=0)

    @torch.inference_mode()
    def predict_many(
        self,
        text_vecs: npt.ArrayLike,
        profile_vecs: Sequence[Vector | None] | None = None,
        speech_vecs: Sequence[Vector | None] | None = None,
    ) -> list[UnderstandingResult]:
        """One batched forward of both heads. `text_vecs` [N, 384]; per message, a profile
        vector [128] and speech features [136] or None."""
        text_np = np.asarray(text_vecs, dtype=np.float32).reshape(
            -1, self.intent_model.trunk.config.in_dim
        )
        n = text_np.shape[0]
        if n == 0:
            return []
        text = torch.from_numpy(text_np).to(self.device)
        profile, has_profile = self._rows(profile_vecs, n, self.profile_dim, "profile")
        speech, has_speech = self._rows(speech_vecs, n, self.speech_dim, "speech")
        probs = self.intent_probs(text, profile, has_profile).cpu().numpy()  # [B, 78]
        log_emotion, decision = self.emotion_model(text, speech, has_speech)
        emotion = log_emotion.exp().cpu().numpy()  # [B, 7]
        emotion_label = decision.argmax(dim=-1).cpu().numpy()
        return [self._result(probs[i], emotion[i], int(emotion_label[i])) for i in range(n)]

    def _result(self, probs: Vector, emotion: Vector, emotion_label: int) -> UnderstandingResult:
        in_scope = probs[:-1]
        top = np.argsort(-in_scope)[:2]
        best = float(in_scope[top[0]])
        oos = int(np.argmax(probs)) == len(probs) - 1 or best < self.oos_threshold
        intent, confidence = (OUT_OF_SCOPE, 1.0 - best) if oos else (self.intents[top[0]], best)
        scores = emotion / max(float(emotion.sum()), 1e-12)
        return UnderstandingResult(
            intent=intent,
            intent_confidence=float(confidence),
            top2=tuple((self.intents[i], float(in_scope[i])) for i in top),
            emotion=SERVICE_EMOTIONS[emotion_label],
            emotion_scores={
                name: float(s) for name, s in zip(SERVICE_EMOTIONS, scores, strict=True)
            },
        )
