"""The intent head's figures: in-scope accuracy and out-of-scope recall at a threshold, the
threshold's choice on validation, and the official test figures, every one computed through
the served path (`fusion.heads.graph.GraphHeads` over the float16 weights as stored)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fusion.heads.checkpoint import shipped_precision
from fusion.heads.graph import GraphHeads
from fusion.heads.modules import IntentModel
from fusion.heads.serving import ServingHeads
from fusion.inference import FusionInference
from fusion.training.calibration import expected_calibration_error
from fusion.training.data import load_banking77, load_clinc_oos
from fusion.training.features import text_features
from fusion.training.heads.film import simulated_sessions
from fusion.training.heads.members import logistic_baseline

__all__ = [
    "INTENT_SERVING",
    "choose_threshold",
    "intent_probs",
    "intent_report",
    "served_intent_figures",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# What `intent_probs` scores through, for the reports and the model card.
INTENT_SERVING = (
    "float16 weights as stored; on a CPU, ONNX Runtime graphs (fusion.heads.graph.GraphHeads) "
    "with the members' first layer and the FiLM generator's last layer in 8 bits"
)


def intent_report(
    probs: FloatArray, labels: IntArray, oos: int, threshold: float
) -> dict[str, float]:
    """In-scope accuracy and out-of-scope recall of calibrated probabilities [N, 78].

    A row is called out of scope when its argmax is the out-of-scope class or its best
    in-scope probability is below `threshold`.
    """
    best = probs[:, :oos].max(axis=1)
    called_oos = (probs.argmax(axis=1) == oos) | (best < threshold)
    pred = np.where(called_oos, oos, probs[:, :oos].argmax(axis=1))
    ins = labels != oos
    return {
        "in_scope_accuracy": float((pred[ins] == labels[ins]).mean()) if ins.any() else 0.0,
        "oos_recall": float((pred[~ins] == oos).mean()) if (~ins).any() else 0.0,
        "oos_precision": float((labels[pred == oos] == oos).mean()) if (pred == oos).any() else 0.0,
    }


def choose_threshold(probs: FloatArray, labels: IntArray, oos: int, max_drop: float) -> float:
    """The largest threshold whose in-scope accuracy is at most `max_drop` below none's."""
    base = intent_report(probs, labels, oos, 0.0)["in_scope_accuracy"]
    chosen = 0.0
    for t in np.linspace(0.0, 0.95, 96):
        if intent_report(probs, labels, oos, float(t))["in_scope_accuracy"] >= base - max_drop:
            chosen = float(t)
    return chosen


@torch.inference_mode()
def intent_probs(
    model: IntentModel,
    text: FloatArray,
    temperature: float,
    profile: FloatArray | None = None,
    present: npt.NDArray[np.bool_] | None = None,
    texts: Sequence[str] | None = None,
) -> FloatArray:
    """Calibrated probabilities [N, 78] as a CPU server computes them: the float16 weights of
    the checkpoint through `GraphHeads` (the intent's largest layers in 8 bits), given the
    messages' `texts` as the server gives them."""
    shipped = IntentModel(model.trunk.config, model.film.config, model.lexicon.config)
    shipped.load_state_dict(model.state_dict())
    shipped_precision(shipped)
    graph = GraphHeads(ServingHeads(shipped.eval(), temperature, None, torch.device("cpu")))
    if profile is None or present is None or not present.any():
        profile = present = None
    return graph.run(text, profile, present, None, None, texts).intent


def served_intent_figures(
    model: IntentModel,
    temperature: float,
    threshold: float,
    data_dir: Path,
    device: torch.device,
    *,
    seed: int,
    bench_seed: int,
    n_sessions: int,
    fusion: FusionInference,
    train_sessions: dict[str, Any],
    use_profile: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The intent head's official test figures, every one through `intent_probs` (the served
    path): `baseline_logreg_test_accuracy`, `test`, `oos_test` and the simulated profile
    benchmark `profile` (sessions of `bench_seed` over Banking77 test through `fusion`).

    `train_sessions` describes the sessions the FiLM generator was trained on (reported as
    is). `use_profile` False scores the benchmark as the server does when the head's profile
    space is not the fusion model's: the profile is ignored.
    """
    train = load_banking77(data_dir, "train")
    test = load_banking77(data_dir, "test")
    intents = train.intents
    oos = len(intents)
    x_tr = text_features(train.texts, device, desc="Banking77 train")
    x_te = text_features(test.texts, device, desc="Banking77 test")
    oos_test_texts = load_clinc_oos(data_dir, "oos_test")
    x_oos_test = text_features(oos_test_texts, device, desc="oos_test")
    figures: dict[str, Any] = {}

    baseline = logistic_baseline(x_tr, train.labels, seed)
    figures["baseline_logreg_test_accuracy"] = float((baseline.predict(x_te) == test.labels).mean())
    print(
        f"baseline (frozen MiniLM + logistic regression C=10): "
        f"{100 * figures['baseline_logreg_test_accuracy']:.2f}%"
    )

    text_only = intent_probs(model, x_te, temperature, texts=test.texts)
    test_acc = float((text_only[:, :oos].argmax(1) == test.labels).mean())
    figures["test"] = {
        "accuracy": test_acc,
        "accuracy_with_oos_class": float((text_only.argmax(1) == test.labels).mean()),
        "ece": expected_calibration_error(
            text_only[:, :oos] / text_only[:, :oos].sum(1, keepdims=True), test.labels
        ),
        "beats_baseline": test_acc > figures["baseline_logreg_test_accuracy"],
    }
    oos_test = intent_probs(model, x_oos_test, temperature, texts=oos_test_texts)
    mixed = np.concatenate([text_only, oos_test])
    mixed_labels = np.concatenate([test.labels, np.full(len(x_oos_test), oos)])
    figures["oos_test"] = {
        "note": "Banking77 test (3,080) + CLINC150 oos_test (1,000); threshold from validation",
        **intent_report(mixed, mixed_labels, oos, threshold),
        "ece": expected_calibration_error(mixed, mixed_labels),
    }
    print(f"intent test accuracy {100 * test_acc:.2f}%  oos {figures['oos_test']}")

    bench, info_test = simulated_sessions(
        data_dir, intents, test.labels, bench_seed, n_sessions, fusion, progress
    )
    x_b = x_te[bench.text_index]
    t_b = [test.texts[i] for i in bench.text_index]
    without = intent_probs(model, x_b, temperature, texts=t_b)[:, :oos].argmax(1)
    with_p = (
        intent_probs(model, x_b, temperature, bench.profile, bench.has_profile, t_b)[
            :, :oos
        ].argmax(1)
        if use_profile
        else without
    )
    empty = intent_probs(
        model,
        x_te,
        temperature,
        np.zeros((len(x_te), 128), np.float32),
        np.zeros(len(x_te), np.bool_),
        test.texts,
    )
    amb = bench.ambiguous

    def acc(pred: IntArray, rows: npt.NDArray[np.bool_]) -> float:
        return float((pred[rows] == bench.intent[rows]).mean())

    everyone = np.ones(len(amb), dtype=np.bool_)
    figures["profile"] = {
        "simulated": True,
        "train_sessions": train_sessions,
        "benchmark_sessions": {
            **info_test,
            "ambiguous": int(amb.sum()),
            "utterances": "Banking77 test",
        },
        "text_only": {"all": acc(without, everyone), "ambiguous": acc(without, amb)},
        "profile_conditioned": {"all": acc(with_p, everyone), "ambiguous": acc(with_p, amb)},
        "empty_profile_test_accuracy": float((empty[:, :oos].argmax(1) == test.labels).mean()),
        "empty_profile_max_abs_prob_diff": float(np.abs(empty - text_only).max()),
    }
    print(f"simulated benchmark: {figures['profile']}")
    return figures
