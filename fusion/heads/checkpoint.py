"""The heads' weights on disk: float16 state dicts with their configs, labels, temperature and
out-of-scope threshold (`fusion/weights/intent.pt`, `emotion.pt`; model cards beside them).

Loading reads tensors only (`torch.load(weights_only=True)`); nothing is fetched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusion.heads.labels import SERVICE_EMOTIONS
from fusion.heads.modules import (
    EmotionModel,
    EnsembleConfig,
    FiLMConfig,
    IntentModel,
    LexiconConfig,
)

__all__ = [
    "EMOTION_WEIGHTS",
    "INTENT_WEIGHTS",
    "WEIGHTS_DIR",
    "IntentArtifact",
    "file_sha256",
    "load_emotion",
    "load_intent",
    "save_emotion",
    "save_intent",
    "shipped_precision",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
INTENT_WEIGHTS = WEIGHTS_DIR / "intent.pt"
EMOTION_WEIGHTS = WEIGHTS_DIR / "emotion.pt"
WEIGHTS_FORMAT = 1


def _half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().half() if v.is_floating_point() else v for k, v in state.items()}


def _float(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def shipped_precision(model: nn.Module) -> None:
    """Round a model's floating tensors to float16 and back, as its checkpoint will hold them."""
    model.load_state_dict(_float(_half(model.state_dict())))


def _save_blob(path: Path, blob: dict[str, Any]) -> None:
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
    _save_blob(
        path,
        {
            "trunk": asdict(art.model.trunk.config),
            "film": asdict(art.model.film.config),
            "lexicon": asdict(art.model.lexicon.config),
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
    trunk = EnsembleConfig(**blob["trunk"])
    empty = {"members": trunk.members, "out_dim": trunk.out_dim}
    model = IntentModel(
        trunk, FiLMConfig(**blob["film"]), LexiconConfig(**blob.get("lexicon", empty))
    )
    state = _float(blob["state_dict"])
    # Checkpoints from before the lexical branch: an empty (all-zero) branch.
    state.setdefault("lexicon.table", model.lexicon.table.detach().clone())
    model.load_state_dict(state)
    return IntentArtifact(
        model.eval(),
        tuple(blob["intents"]),
        float(blob["temperature"]),
        float(blob["oos_threshold"]),
        blob.get("profile_space"),
        dict(blob.get("metadata", {})),
    )


def save_emotion(path: Path, model: EmotionModel, metadata: Mapping[str, Any]) -> None:
    _save_blob(
        path,
        {
            "text": asdict(model.text.config),
            "speech": asdict(model.speech.config),
            "lexicon": asdict(model.lexicon.config),
            "state_dict": _half(model.state_dict()),
            "emotions": list(SERVICE_EMOTIONS),
            "metadata": dict(metadata),
        },
    )


def load_emotion(path: Path = EMOTION_WEIGHTS) -> tuple[EmotionModel, dict[str, Any]]:
    blob = _load_blob(path)
    if tuple(blob["emotions"]) != SERVICE_EMOTIONS:
        raise ValueError(f"{path}: emotions {blob['emotions']} differ from {SERVICE_EMOTIONS}")
    text = EnsembleConfig(**blob["text"])
    lexicon = LexiconConfig(**blob.get("lexicon", {"members": text.members}))
    model = EmotionModel(text, EnsembleConfig(**blob["speech"]), lexicon)
    state = _float(blob["state_dict"])
    # Checkpoints from before the lexical branch: an empty (all-zero) branch.
    state.setdefault("lexicon.table", model.lexicon.table.detach().clone())
    # Buffers that set the decision are kept in full precision (fp16 rounding of a
    # temperature or offset would move outputs for no size gain).
    model.load_state_dict(state)
    return model.eval(), dict(blob.get("metadata", {}))
