"""A pack's intent head: a cross-fitted ensemble over its examples (+ out-of-scope
negatives), calibrated and thresholded on out-of-fold predictions, written as the artifact
the server's loader reads (`fusion.heads.checkpoint`).

The examples are dealt into `folds` stratified folds and member k is trained on every fold
but k, so each example gets a prediction from a member that never saw it: those predictions
are the cross-validated figures, and they fit the temperature and the out-of-scope
threshold. The served head is the ensemble of all the members (each saw (k-1)/k of the
examples), so the cross-validated figures are those of one member, a slight understatement.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.heads.checkpoint import IntentArtifact, file_sha256, save_intent, shipped_precision
from fusion.heads.labels import OUT_OF_SCOPE
from fusion.heads.lexical import lexical_ids
from fusion.heads.modules import (
    EnsembleConfig,
    EnsembleMLP,
    FiLMConfig,
    IntentModel,
    LexicalBag,
    LexiconConfig,
)
from fusion.training.calibration import expected_calibration_error, fit_temperature
from fusion.training.features import digest, text_features
from fusion.training.heads.intent_figures import choose_threshold, intent_probs, intent_report
from fusion.training.heads.members import (
    FitConfig,
    LexiconFit,
    fit_lexical_member,
    logistic_baseline,
    one_hot,
    softmax,
    stratified_folds,
    text_logits,
)
from fusion.training.packs.card import pack_card
from fusion.training.packs.negatives import Negatives

__all__ = ["WEIGHTS_FILE", "PackData", "PackTrainConfig", "train_pack"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

WEIGHTS_FILE = "intent.pt"
CARD_FILE = "model_card.md"
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True, slots=True)
class PackData:
    """What the trainer needs of a pack: its name and each intent's examples."""

    name: str
    language: str
    intents: tuple[str, ...]  # the head's label order
    examples: tuple[tuple[str, ...], ...]  # per intent, in `intents` order

    def rows(self) -> tuple[tuple[str, ...], IntArray]:
        texts = tuple(t for group in self.examples for t in group)
        labels = np.repeat(np.arange(len(self.intents)), [len(g) for g in self.examples])
        return texts, labels.astype(np.int64)

    def digest(self) -> str:
        """Names the pack's training content: the same intents and examples, the same value."""
        return digest([json.dumps([self.intents, self.examples])])


@dataclass(frozen=True, slots=True)
class PackTrainConfig:
    folds: int = 5  # cross-validation folds = ensemble members
    hidden: int = 256
    epochs: int = 60
    lexicon_buckets: int = 4096  # as the Banking77 head, so a message is hashed once for both
    lexicon_lr: float = 5e-3
    seed: int = 0
    # In-scope accuracy (out of fold) the out-of-scope threshold may cost.
    max_in_scope_drop: float = 0.01
    threads: int = 2  # torch threads
    progress: bool = True


def _cv_baseline(x: FloatArray, y: IntArray, fold: IntArray, seed: int) -> float:
    """The do-it-yourself baseline on the same folds: frozen embeddings + logistic regression."""
    right = 0
    for k in np.unique(fold):
        held = fold == k
        model = logistic_baseline(x[~held], y[~held], seed)
        right += int((model.predict(x[held]) == y[held]).sum())
    return right / len(y)


def _per_intent(
    intents: Sequence[str], labels: IntArray, predicted: IntArray
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Out-of-fold accuracy per intent, and the confusions, most frequent first."""
    accuracy = {name: float((predicted[labels == i] == i).mean()) for i, name in enumerate(intents)}
    pairs: dict[tuple[int, int], int] = {}
    for true, pred in zip(labels.tolist(), predicted.tolist(), strict=True):
        if true != pred:
            pairs[(true, pred)] = pairs.get((true, pred), 0) + 1
    confusions = [
        {
            "intent": intents[t],
            "taken_for": intents[p] if p < len(intents) else OUT_OF_SCOPE,
            "n": n,
        }
        for (t, p), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return accuracy, confusions


def _cross_fit(
    config: PackTrainConfig,
    n: int,
    fold: IntArray,
    labels: IntArray,
    x: FloatArray,
    grams: list[list[int]],
    x_neg: dict[str, FloatArray],
    g_neg: dict[str, list[list[int]]],
) -> tuple[list[EnsembleMLP], list[LexicalBag], FloatArray, FloatArray]:
    """One member per fold, trained on the other folds and the negatives' train split; with
    the out-of-fold logits of the examples [N, n+1] and of the negatives' val split, each
    val row scored by one member, dealt round-robin."""
    oos = n
    trunk = EnsembleConfig(members=1, hidden=config.hidden, out_dim=n + 1)
    fit = FitConfig(epochs=config.epochs, seed=config.seed)
    lexicon = LexiconFit(config.lexicon_buckets, config.lexicon_lr)
    members: list[EnsembleMLP] = []
    bags: list[LexicalBag] = []
    oof = np.zeros((len(x), n + 1), dtype=np.float32)
    val_owner = np.arange(len(x_neg["val"])) % config.folds
    val_logits = np.zeros((len(x_neg["val"]), n + 1), dtype=np.float32)
    for k in tqdm(range(config.folds), desc="members", unit="member", disable=not config.progress):
        rows = fold != k
        x_k = np.concatenate([x[rows], x_neg["train"]])
        y_k = np.concatenate([labels[rows], np.full(len(x_neg["train"]), oos)])
        g_k = [g for g, r in zip(grams, rows, strict=True) if r] + g_neg["train"]
        member, bag = fit_lexical_member(
            trunk,
            replace(fit, seed=config.seed * 100 + k),
            x_k,
            one_hot(y_k, n + 1),
            g_k,
            lexicon,
            progress=config.progress,
            desc=f"member {k + 1}/{config.folds}",
        )
        members.append(member)
        bags.append(bag)
        held = np.flatnonzero(fold == k)
        oof[held] = text_logits(member, bag, x[held], [grams[i] for i in held])[0]
        mine = np.flatnonzero(val_owner == k)
        if len(mine):
            val_logits[mine] = text_logits(
                member, bag, x_neg["val"][mine], [g_neg["val"][i] for i in mine]
            )[0]
    return members, bags, oof, val_logits


def train_pack(
    data: PackData,
    negatives: Negatives,
    out_dir: Path,
    config: PackTrainConfig,
    device: torch.device,
    command: str = "",
) -> dict[str, Any]:
    """Train, evaluate and write `out_dir`/intent.pt, model_card.md and evaluation.json; the
    evaluation report."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    texts, labels = data.rows()
    n = len(data.intents)
    oos = n  # the out-of-scope class comes after the intents, as Banking77's does
    if config.folds < 2 or np.bincount(labels).min() < config.folds:
        raise ValueError(
            f"{config.folds} folds: the folds must be 2 or more, and every intent needs at "
            "least as many examples"
        )
    # The negatives are the same for every pack: embedded in a call of their own, they are
    # cached once, and editing a pack re-embeds only its examples.
    splits = ("train", "val", "test")
    x = text_features(texts, device, desc="pack examples")
    every = [getattr(negatives, split) for split in splits]
    x_all = text_features([t for part in every for t in part], device, desc="negatives")
    x_neg = dict(zip(splits, np.split(x_all, np.cumsum([len(p) for p in every])[:-1]), strict=True))
    buckets = max(config.lexicon_buckets, 1)
    grams = [lexical_ids(t, buckets) for t in texts]
    g_neg = {
        split: [lexical_ids(t, buckets) for t in getattr(negatives, split)] for split in splits
    }

    fold = stratified_folds(labels, config.folds, config.seed)
    members, bags, oof, val_logits = _cross_fit(config, n, fold, labels, x, grams, x_neg, g_neg)
    baseline = _cv_baseline(x, labels, fold, config.seed)

    all_logits = np.concatenate([oof, val_logits])
    all_labels = np.concatenate([labels, np.full(len(val_logits), oos)])
    temperature = fit_temperature(torch.from_numpy(all_logits), torch.from_numpy(all_labels))
    probs = softmax(all_logits, temperature)
    threshold = choose_threshold(probs, all_labels, oos, config.max_in_scope_drop)
    with_oos = intent_report(probs, all_labels, oos, threshold)
    best = probs[: len(texts), :oos].argmax(axis=1)
    called_oos = (probs[: len(texts)].argmax(axis=1) == oos) | (
        probs[: len(texts), :oos].max(axis=1) < threshold
    )
    per_intent, confusions = _per_intent(
        data.intents, labels, np.where(called_oos, oos, best).astype(np.int64)
    )

    model = IntentModel(
        EnsembleConfig(members=config.folds, hidden=config.hidden, out_dim=n + 1),
        FiLMConfig(target=config.hidden),
        LexiconConfig(config.lexicon_buckets, config.folds, n + 1),
    )
    model.trunk = EnsembleMLP.stack(members)
    model.lexicon = LexicalBag.stack(bags)
    model.eval()
    shipped_precision(model)
    oos_test: dict[str, Any] | None = None
    if negatives.test:
        served = intent_probs(model, x_neg["test"], temperature, texts=negatives.test)
        flagged = (served.argmax(axis=1) == oos) | (served[:, :oos].max(axis=1) < threshold)
        oos_test = {"n": len(negatives.test), "recall": float(flagged.mean())}

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    save_intent(
        weights,
        IntentArtifact(
            model,
            (*data.intents, OUT_OF_SCOPE),
            temperature,
            threshold,
            None,  # no profile stage yet: the profile never moves this head
            {"pack": data.name, "pack_digest": data.digest(), "command": command},
        ),
    )
    report: dict[str, Any] = {
        "pack": {
            "name": data.name,
            "language": data.language,
            "intents": n,
            "examples": len(texts),
            "digest": data.digest(),
        },
        "command": command,
        "trained": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, device {device}, "
        f"torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "negatives": {
            "source": negatives.source,
            "train": len(negatives.train),
            "val": len(negatives.val),
            "test": len(negatives.test),
        },
        "cross_validation": {
            "note": f"out-of-fold predictions of {config.folds} stratified folds, one member each",
            "accuracy_no_oos_detection": float((oof[:, :oos].argmax(axis=1) == labels).mean()),
            "in_scope_accuracy": with_oos["in_scope_accuracy"],
            "in_scope_called_oos": float(called_oos.mean()),
            "oos_val_recall": with_oos["oos_recall"] if negatives.val else None,
            "baseline_logreg_accuracy": baseline,
            "per_intent_accuracy": per_intent,
            "confusions": confusions[:20],
        },
        "calibration": {
            "temperature": temperature,
            "oos_threshold": threshold,
            "ece_before": expected_calibration_error(softmax(all_logits), all_labels),
            "ece_after": expected_calibration_error(probs, all_labels),
        },
        "oos_test": oos_test,
        "artifact": {
            "file": WEIGHTS_FILE,
            "sha256": file_sha256(weights),
            "labels": [*data.intents, OUT_OF_SCOPE],
        },
    }
    report["runtime_s"] = round(time.perf_counter() - started, 1)
    (out_dir / EVALUATION_FILE).write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / CARD_FILE).write_text(pack_card(report))
    return report
