"""The intent head's profile conditioning: a FiLM generator trained, with every member
frozen, on simulated sessions (`fusion.training.simulator`) whose profile is the shipped
fusion model's vector of the user's behaviour and speech before they wrote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.heads.checkpoint import file_sha256
from fusion.heads.lexical import lexical_pack
from fusion.heads.modules import IntentModel
from fusion.inference import WEIGHTS_PATH as FUSION_WEIGHTS
from fusion.inference import FuseRequest, FusionInference
from fusion.profile_update import update_state
from fusion.training.heads.members import FitConfig
from fusion.training.ravdess import speech_table
from fusion.training.simulator import SimulatorConfig, simulate

__all__ = [
    "BACKGROUND_ONLY_P",
    "Sessions",
    "film_validation",
    "fit_film",
    "load_fusion",
    "simulated_sessions",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# Share of training sessions whose behaviour is browsing alone (a home page view, a search):
# without them the generator saw behaviour only beside an intent's signature, so any event at
# all moved clear messages (bench/second_message.py: -0.52 points after one home page view).
# Validation and the benchmark keep the simulator's default sessions, comparable across runs.
BACKGROUND_ONLY_P = 0.2


@dataclass(frozen=True, slots=True)
class Sessions:
    """Simulated sessions reduced to what the intent head reads."""

    text_index: IntArray  # [N] utterance row
    intent: IntArray  # [N]
    ambiguous: npt.NDArray[np.bool_]  # [N]
    profile: FloatArray  # [N, 128] profile vector before the message
    has_profile: npt.NDArray[np.bool_]  # [N]


def load_fusion(device: torch.device) -> tuple[FusionInference, str]:
    """The shipped fusion model and the sha256 of the very bytes it was loaded from."""
    before = file_sha256(FUSION_WEIGHTS)
    fusion = FusionInference.load(FUSION_WEIGHTS, device)
    if file_sha256(FUSION_WEIGHTS) != before:
        raise RuntimeError(f"{FUSION_WEIGHTS} changed while it was loaded; run again")
    return fusion, before


def simulated_sessions(
    data_dir: Path,
    intents: tuple[str, ...],
    labels: IntArray,
    seed: int,
    n_sessions: int,
    fusion: FusionInference,
    progress: bool,
    background_only_p: float = 0.0,
) -> tuple[Sessions, dict[str, Any]]:
    """Sessions of `fusion.training.simulator` over the utterances `labels`, with the profile a user
    would have before writing: the shipped fusion model's vector of their behaviour and, when
    the session has it, speech (the text is left out: the head sees it directly)."""
    speech = speech_table(data_dir, fusion.device, progress)
    config = replace(
        SimulatorConfig(), seed=seed, n_sessions=n_sessions, background_only_p=background_only_p
    )
    bench = simulate(
        config, intents, labels.tolist(), speech.emotions, speech.actors, speech.genders
    )
    speech_x = speech.features
    profiles = np.zeros((len(bench.sessions), fusion.dim), dtype=np.float32)
    present = np.zeros(len(bench.sessions), dtype=np.bool_)
    chunk = 512
    for start in tqdm(
        range(0, len(bench.sessions), chunk), desc="profiles", unit="chunk", disable=not progress
    ):
        part = bench.sessions[start : start + chunk]
        requests = [
            FuseRequest(
                None,
                speech_x[s.speech_index] if s.speech_index >= 0 else None,
                s.events,
                s.now,
            )
            for s in part
        ]
        for i, (s, r) in enumerate(zip(part, fusion.fuse_many(requests), strict=True)):
            if s.events or s.speech_index >= 0:
                profiles[start + i] = update_state(None, r.z, r.contributions, 0.0).vector
                present[start + i] = True
    sessions = Sessions(
        np.array([s.text_index for s in bench.sessions], dtype=np.int64),
        np.array([s.intent for s in bench.sessions], dtype=np.int64),
        np.array([s.ambiguous for s in bench.sessions]),
        profiles,
        present,
    )
    info = {
        "seed": seed,
        "n_sessions": n_sessions,
        "background_only_p": background_only_p,
        "with_profile": int(present.sum()),
    }
    return sessions, info


def fit_film(
    model: IntentModel,
    member_of: IntArray,
    text_x: FloatArray,
    grams: Sequence[list[int]],
    sessions: Sessions,
    fit: FitConfig,
    progress: bool,
) -> None:
    """Train only the FiLM generator, every MLP and the lexical branch frozen. `text_x` and
    `grams` (`lexical_ids`) are the utterances' that `sessions.text_index` points into.

    Each session's utterance goes through the one member that never trained on it, so the
    generator learns to correct the text model's out-of-sample errors, not training-set
    certainty.
    """
    torch.manual_seed(fit.seed)
    rng = np.random.default_rng(fit.seed)
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    model.train()
    model.trunk.eval()  # no dropout in the frozen trunk: its hidden layer is what FiLM modulates
    opt = torch.optim.AdamW(model.film.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    n = len(sessions.intent)
    steps = fit.epochs * -(-n // fit.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=fit.lr, total_steps=steps)
    text = torch.from_numpy(text_x[sessions.text_index])
    member = torch.from_numpy(member_of[sessions.text_index])
    profile = torch.from_numpy(sessions.profile)
    present = torch.from_numpy(sessions.has_profile)
    target = torch.from_numpy(sessions.intent)
    utterance = sessions.text_index
    for _ in tqdm(range(fit.epochs), desc="FiLM", unit="ep", leave=False, disable=not progress):
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, fit.batch_size):
            b = order[start : start + fit.batch_size]
            lexical = lexical_pack([grams[i] for i in utterance[b.numpy()]])
            logits = model(text[b], profile[b], present[b], lexical)  # [M, b, C]
            own = logits[member[b], torch.arange(len(b))]  # [b, C]
            loss = torch.nn.functional.cross_entropy(own, target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            opt.step()
            sched.step()
    for p in model.trunk.parameters():
        p.requires_grad_(True)
    model.eval()


@torch.inference_mode()
def film_validation(
    model: IntentModel,
    member_of: IntArray,
    text_x: FloatArray,
    grams: Sequence[list[int]],
    sessions: Sessions,
) -> dict[str, float]:
    """Intent accuracy of the out-of-fold member with and without the profile."""
    text = torch.from_numpy(text_x[sessions.text_index])
    member = torch.from_numpy(member_of[sessions.text_index])
    rows = torch.arange(len(member))
    profile = torch.from_numpy(sessions.profile)
    on = torch.from_numpy(sessions.has_profile)
    lexical = lexical_pack([grams[i] for i in sessions.text_index])
    y, amb = sessions.intent, sessions.ambiguous
    out: dict[str, float] = {}
    for name, present in (("text_only", torch.zeros_like(on)), ("profile_conditioned", on)):
        pred = model(text, profile, present, lexical)[member, rows].argmax(-1).numpy()
        out[f"{name}_all"] = float((pred == y).mean())
        out[f"{name}_ambiguous"] = float((pred[amb] == y[amb]).mean())
    return out
