"""One fusion model fitted and scored on simulated sessions: the sessions as tensors on the
training device, the shared training settings and loop, predictions and their scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score  # type: ignore[import-untyped, unused-ignore]
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.behaviour import BehaviourTensors, collate, featurize_events
from fusion.model import MODALITIES, FusionModel, FusionModelConfig, joint_loss
from fusion.training.simulator import Benchmark
from fusion.training.simulator_tables import EMOTIONS

__all__ = [
    "SessionTensors",
    "TrainConfig",
    "default_model_config",
    "predict",
    "score",
    "session_tensors",
    "train_model",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SessionTensors:
    """Everything the model reads for every session, on the training device."""

    text: torch.Tensor  # [N, 384]
    speech: torch.Tensor  # [N, S]
    behaviour: BehaviourTensors  # [N, T]
    masks: torch.Tensor  # [N, 3] bool
    intent: torch.Tensor  # [N] long
    emotion: torch.Tensor  # [N] long
    ambiguous: npt.NDArray[np.bool_]  # [N]


def session_tensors(
    bench: Benchmark,
    text_x: FloatArray,
    speech_x: FloatArray,
    device: torch.device,
    max_events: int = 32,
) -> SessionTensors:
    s = bench.sessions
    n, dim = len(s), speech_x.shape[1]
    speech = np.zeros((n, dim), dtype=np.float32)
    has_speech = np.array([x.speech_index >= 0 for x in s])
    speech[has_speech] = speech_x[[x.speech_index for x in s if x.speech_index >= 0]]
    behaviour = collate([featurize_events(x.events, x.now, max_events) for x in s])
    masks = np.stack([np.ones(n, dtype=np.bool_), has_speech, behaviour.present()], axis=1)
    return SessionTensors(
        text=torch.as_tensor(text_x[[x.text_index for x in s]], device=device),
        speech=torch.as_tensor(speech, device=device),
        behaviour=BehaviourTensors.from_batch(behaviour, device),
        masks=torch.as_tensor(masks, device=device),
        intent=torch.as_tensor([x.intent for x in s], dtype=torch.long, device=device),
        emotion=torch.as_tensor([x.emotion for x in s], dtype=torch.long, device=device),
        ambiguous=np.array([x.ambiguous for x in s]),
    )


def default_model_config() -> FusionModelConfig:
    """The settings every model of the ablation trains with (chosen on the development check).

    Late fusion (per-modality experts added to the fused heads' logits) is on here, not in
    `FusionModelConfig`'s defaults, so checkpoints saved without it keep loading.
    """
    return FusionModelConfig(late_fusion=True, expert_weight=0.5)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_model(
    config: FusionModelConfig,
    train: TrainConfig,
    data: SessionTensors,
    rows: IntArray,
    device: torch.device,
    progress: bool = True,
    desc: str = "train",
) -> FusionModel:
    """A fresh model trained on `rows`; deterministic given `train.seed`."""
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    model = FusionModel(config).to(device)
    idx = torch.as_tensor(rows, device=device)
    with_speech = idx[data.masks[idx, 1]]
    if len(with_speech) > 1:
        feats = data.speech[with_speech]
        model.set_speech_stats(feats.mean(dim=0), feats.std(dim=0))
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    steps_per_epoch = max(1, -(-len(rows) // train.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=train.lr, total_steps=train.epochs * steps_per_epoch, pct_start=0.1
    )
    model.train()
    bar = tqdm(range(train.epochs), desc=desc, leave=False, disable=not progress, unit="ep")
    for _ in bar:
        order = rng.permutation(rows)
        total = 0.0
        for start in range(0, len(order), train.batch_size):
            b = torch.as_tensor(order[start : start + train.batch_size], device=device)
            beh = data.behaviour.index(b)
            out = model(data.text[b], data.speech[b], beh, data.masks[b])
            loss = joint_loss(model, out, data.text[b], beh, data.intent[b], data.emotion[b])
            opt.zero_grad(set_to_none=True)
            loss.total.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            total += float(loss.total.detach())
        bar.set_postfix(loss=f"{total / steps_per_epoch:.3f}")
    return model.eval()


@torch.inference_mode()
def predict(
    model: FusionModel,
    data: SessionTensors,
    rows: IntArray,
    hide: str | None = None,
    batch_size: int = 1024,
) -> tuple[IntArray, IntArray]:
    """Intent and emotion predictions; `hide` masks one modality in every test session."""
    model.eval()
    intents, emotions = [], []
    for start in range(0, len(rows), batch_size):
        b = torch.as_tensor(rows[start : start + batch_size], device=data.text.device)
        masks = data.masks[b].clone()
        if hide is not None:
            masks[:, MODALITIES.index(hide)] = False
        out = model(data.text[b], data.speech[b], data.behaviour.index(b), masks)
        intents.append(out.intent_logits.argmax(dim=-1).cpu().numpy())
        emotions.append(out.emotion_logits.argmax(dim=-1).cpu().numpy())
    return np.concatenate(intents), np.concatenate(emotions)


def score(
    data: SessionTensors, rows: IntArray, intent_pred: IntArray, emotion_pred: IntArray
) -> dict[str, float]:
    true_i = data.intent[torch.as_tensor(rows)].cpu().numpy()
    true_e = data.emotion[torch.as_tensor(rows)].cpu().numpy()
    amb = data.ambiguous[rows]
    labels = list(range(len(EMOTIONS)))

    def f1(t: IntArray, p: IntArray) -> float:
        return float(f1_score(t, p, labels=labels, average="macro", zero_division=0))

    return {
        "intent_acc": float((intent_pred == true_i).mean()),
        "intent_acc_ambiguous": float((intent_pred[amb] == true_i[amb]).mean()),
        "emotion_f1": f1(true_e, emotion_pred),
        "emotion_f1_ambiguous": f1(true_e[amb], emotion_pred[amb]),
    }
