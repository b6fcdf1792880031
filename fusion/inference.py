"""Inference wrapper for the server: shipped fusion weights in, fused vectors out.

    fusion = FusionInference.load()          # fusion/weights/fusion.pt, offline
    z, contributions = fusion.fuse(text_vec, speech_vec_or_None, events, now)

`z` is float32 [shared_dim]; `contributions` maps "text" / "speech" / "behaviour" to the
share each had in `z` (0 for an absent one; the shares sum to 1 when any is present), which
is what operators see as "which modality moved this profile".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fusion.behaviour import (
    BehaviourEncoderConfig,
    BehaviourTensors,
    EventLike,
    collate,
    featurize_events,
)
from fusion.model import MODALITIES, FusionModel, FusionModelConfig
from fusion.vectors import stack_rows

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "fusion.pt"
WEIGHTS_FORMAT = 1
Vector = npt.NDArray[np.float32]


def config_to_dict(config: FusionModelConfig) -> dict[str, Any]:
    out = asdict(config)
    out["modalities"] = list(config.modalities)
    return out


def config_from_dict(data: Mapping[str, Any]) -> FusionModelConfig:
    values = dict(data)
    values["modalities"] = tuple(values["modalities"])
    values["behaviour"] = BehaviourEncoderConfig(**values["behaviour"])
    return FusionModelConfig(**values)


def save_checkpoint(
    path: Path,
    model: FusionModel,
    intents: Sequence[str],
    emotions: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    max_events: int = 32,
) -> None:
    blob = {
        "format": WEIGHTS_FORMAT,
        "config": config_to_dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "intents": list(intents),
        "emotions": list(emotions),
        "max_events": max_events,
        "metadata": dict(metadata or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


@dataclass(frozen=True, slots=True)
class FuseRequest:
    text: Vector | None  # [384] or None
    speech: Vector | None  # [speech_dim] or None
    events: Sequence[EventLike]
    now: datetime


@dataclass(frozen=True, slots=True)
class FuseResult:
    z: Vector  # [shared_dim]
    contributions: dict[str, float]
    intent_probs: Vector  # [n_intents], simulator-trained head: diagnostics only
    emotion_probs: Vector  # [n_emotions]


class FusionInference:
    """The fusion model in eval mode on one device; thread-compatible (no state per call)."""

    def __init__(
        self,
        model: FusionModel,
        intents: Sequence[str],
        emotions: Sequence[str],
        device: torch.device,
        max_events: int = 32,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.intents = tuple(intents)
        self.emotions = tuple(emotions)
        self.max_events = max_events
        self.metadata = dict(metadata or {})
        self.config = model.config

    @classmethod
    def load(cls, path: Path | None = None, device: torch.device | None = None) -> FusionInference:
        source = path or WEIGHTS_PATH
        blob = torch.load(source, map_location="cpu", weights_only=True)
        if blob.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{source}: unsupported fusion weights format {blob.get('format')}")
        model = FusionModel(config_from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
        return cls(
            model,
            blob["intents"],
            blob["emotions"],
            device or torch.device("cpu"),
            int(blob.get("max_events", 32)),
            blob.get("metadata"),
        )

    @property
    def dim(self) -> int:
        return self.config.shared_dim

    @property
    def speech_dim(self) -> int:
        return self.config.speech_dim

    def fuse(
        self,
        text_vec: Vector | None,
        speech_vec: Vector | None,
        events: Sequence[EventLike],
        now: datetime,
    ) -> tuple[Vector, dict[str, float]]:
        result = self.fuse_many([FuseRequest(text_vec, speech_vec, events, now)])[0]
        return result.z, result.contributions

    def _column(self, vecs: Sequence[Vector | None], dim: int, name: str) -> torch.Tensor:
        return torch.as_tensor(stack_rows(vecs, dim, name), device=self.device)

    @torch.inference_mode()
    def fuse_many(self, requests: Sequence[FuseRequest]) -> list[FuseResult]:
        """One batched forward for many users' turns."""
        if not requests:
            return []
        cfg = self.config
        text = self._column([r.text for r in requests], cfg.text_dim, "text")  # [B, 384]
        speech = self._column([r.speech for r in requests], cfg.speech_dim, "speech")  # [B, S]
        batch = collate([featurize_events(r.events, r.now, self.max_events) for r in requests])
        masks = np.stack(
            [
                np.array([r.text is not None for r in requests]),
                np.array([r.speech is not None for r in requests]),
                batch.present(),
            ],
            axis=1,
        )  # [B, 3]
        z_t, gates_t, intent_logits, emotion_logits = self.model.infer(
            text,
            speech,
            BehaviourTensors.from_batch(batch, self.device),
            torch.as_tensor(masks, device=self.device),
        )
        z = z_t.float().cpu().numpy()
        gates = gates_t.float().cpu().numpy()
        intents = torch.softmax(intent_logits, dim=-1).float().cpu().numpy()
        emotions = torch.softmax(emotion_logits, dim=-1).float().cpu().numpy()
        return [
            FuseResult(
                z[i],
                {m: float(gates[i, j]) for j, m in enumerate(MODALITIES)},
                intents[i],
                emotions[i],
            )
            for i in range(len(requests))
        ]
