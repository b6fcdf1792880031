"""The emotion head's speech expert: an ensemble over the voice features of RAVDESS clips
(`fusion.voice_emotion`), scored leave-actors-out over every actor."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.asr import AsrConfig, SpeechRecognizer
from fusion.heads.labels import RAVDESS, RAVDESS_TO_SERVICE, SERVICE_EMOTIONS, mapping_matrix
from fusion.heads.modules import EnsembleConfig, EnsembleMLP
from fusion.speech import SpeechFeaturizer
from fusion.training.calibration import expected_calibration_error, fit_temperature, macro_f1
from fusion.training.heads.members import (
    FitConfig,
    fit_member,
    logistic_baseline,
    member_logits,
    one_hot,
    softmax,
)
from fusion.training.heads.scores import emotion_scores
from fusion.training.ravdess import RAVDESS_DIR, ravdess_voice_features, read_ravdess_index

__all__ = ["HELD_ACTORS", "actor_folds", "train_speech_head"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Actors whose clips score the simulated text + speech pairs; the other actors' clips fit the
# fusion weights (out-of-fold speech predictions for both).
HELD_ACTORS = (19, 20, 21, 22)


def actor_folds(actors: IntArray, k: int) -> IntArray:
    """Speaker-independent folds: sorted actor ids dealt round-robin (odd ids are male, so
    every fold hears both genders)."""
    ids = sorted(set(actors.tolist()))
    fold_of = {a: i % k for i, a in enumerate(ids)}
    return np.array([fold_of[int(a)] for a in actors], dtype=np.int64)


def train_speech_head(
    args: argparse.Namespace, data_dir: Path, device: torch.device
) -> tuple[
    dict[str, Any],
    EnsembleMLP,
    tuple[FloatArray, FloatArray],
    float,
    FloatArray,
    tuple[list[str], IntArray],
]:
    """RAVDESS 8-way head on `fusion.voice_emotion` features, leave-actors-out over every actor.

    Every clip is used twice, as recorded and through the telephone path; a fold's clips of
    both kinds are held out together. Returns the report, the head trained on every actor,
    its feature statistics, temperature, out-of-fold probabilities of the recorded clips
    [clips, 8] and (emotion per clip, actor per clip).
    """
    progress = not args.no_progress
    ravdess = data_dir / RAVDESS_DIR
    recognizer = SpeechRecognizer(AsrConfig(device="cpu", workers=1, cpu_threads=args.threads))
    featurizer = SpeechFeaturizer(device)
    index = read_ravdess_index(ravdess)
    emotions = [c.emotion for c in index]
    actors = np.asarray([c.actor for c in index], dtype=np.int64)
    recorded, phoned = (
        ravdess_voice_features(ravdess, recognizer, featurizer, telephone=t, progress=progress)
        for t in (False, True)
    )
    y = np.array([RAVDESS.index(e) for e in emotions], dtype=np.int64)
    fold = actor_folds(actors, args.speech_folds)
    cfg = EnsembleConfig(
        members=1,
        in_dim=recorded.shape[1],
        hidden=args.speech_hidden,
        out_dim=len(RAVDESS),
        dropout=0.5,
        input_dropout=0.2,
        input_scale=1.0,
    )
    fit = FitConfig(
        epochs=args.speech_epochs, batch_size=32, lr=1e-3, weight_decay=5e-2, seed=args.seed
    )

    def training_rows(rows: npt.NDArray[np.bool_]) -> tuple[FloatArray, IntArray]:
        return np.concatenate([recorded[rows], phoned[rows]]), np.concatenate([y[rows], y[rows]])

    def fit_all(
        rows: npt.NDArray[np.bool_], desc: str
    ) -> tuple[EnsembleMLP, tuple[FloatArray, FloatArray]]:
        x, labels = training_rows(rows)
        stats = x.mean(0), np.maximum(x.std(0), 1e-6).astype(np.float32)
        z = ((x - stats[0]) / stats[1]).astype(np.float32)
        heads = [
            fit_member(
                cfg,
                replace(fit, seed=args.seed * 100 + m),
                z,
                one_hot(labels, len(RAVDESS)),
                progress,
                f"{desc} m{m + 1}",
            )
            for m in range(args.speech_members)
        ]
        return EnsembleMLP.stack(heads), stats

    def scaled(x: FloatArray, stats: tuple[FloatArray, FloatArray]) -> FloatArray:
        return ((x - stats[0]) / stats[1]).astype(np.float32)

    shape = (args.speech_members, len(y), len(RAVDESS))
    oof_logits = np.zeros(shape, dtype=np.float32)
    oof_phoned = np.zeros(shape, dtype=np.float32)
    base_pred = np.zeros(len(y), dtype=np.int64)
    for k in tqdm(range(args.speech_folds), desc="actor folds", disable=not progress):
        held = fold == k
        head, stats = fit_all(~held, f"fold {k + 1}")
        oof_logits[:, held] = member_logits(head, scaled(recorded[held], stats))
        oof_phoned[:, held] = member_logits(head, scaled(phoned[held], stats))
        x, labels = training_rows(~held)
        base = logistic_baseline(scaled(x, stats), labels, args.seed)
        base_pred[held] = base.predict(scaled(recorded[held], stats))
    t_speech = fit_temperature(torch.from_numpy(oof_logits), torch.from_numpy(y))
    oof = softmax(oof_logits, t_speech).mean(0)
    oof_tel = softmax(oof_phoned, t_speech).mean(0)
    clip_service = np.array([SERVICE_EMOTIONS.index(RAVDESS_TO_SERVICE[e]) for e in emotions])
    to_service = mapping_matrix(RAVDESS, SERVICE_EMOTIONS, RAVDESS_TO_SERVICE)
    n = len(SERVICE_EMOTIONS)

    def block(p: FloatArray, rows: npt.NDArray[np.bool_]) -> dict[str, Any]:
        service_p = p[rows] @ to_service
        return {
            "clips": int(rows.sum()),
            "accuracy_8": float((p[rows].argmax(1) == y[rows]).mean()),
            "macro_f1_8": macro_f1(y[rows], p[rows].argmax(1), len(RAVDESS)),
            "ece_8": expected_calibration_error(p[rows], y[rows]),
            "service": emotion_scores(service_p, service_p, clip_service[rows], n),
        }

    everyone = np.ones(len(y), dtype=np.bool_)
    report = {
        "features": "fusion.voice_emotion: Whisper tiny.en encoder mean + prosody",
        "folds": args.speech_folds,
        "fold_actors": {
            str(k): sorted({int(a) for a in actors[fold == k]}) for k in range(args.speech_folds)
        },
        "temperature": t_speech,
        "all_actors": {
            **block(oof, everyone),
            "baseline_logreg_accuracy_8": float((base_pred == y).mean()),
        },
        "all_actors_telephone": block(oof_tel, everyone),
        "actors_19_22": block(oof, np.isin(actors, HELD_ACTORS)),
        "per_fold_accuracy_8": [
            float((oof[fold == k].argmax(1) == y[fold == k]).mean())
            for k in range(args.speech_folds)
        ],
    }
    print(
        f"speech (leave-actors-out): {report['all_actors']['accuracy_8']:.3f} recorded, "
        f"{report['all_actors_telephone']['accuracy_8']:.3f} through the telephone path, "
        f"logistic baseline {report['all_actors']['baseline_logreg_accuracy_8']:.3f}"
    )
    head, stats = fit_all(everyone, "final")
    return report, head, stats, t_speech, oof, (emotions, actors)
