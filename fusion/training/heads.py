"""Train and evaluate the intent and emotion heads (`assistant train intent|emotion ...`).

    python -m fusion.training.heads intent --data ../shared/data
    python -m fusion.training.heads emotion --data ../shared/data

Text features are frozen all-MiniLM-L6-v2 embeddings, cached under var/cache/ by the texts'
digest (the same files `fusion.training.fusion_model` writes for Banking77). Every choice is made on
training data or validation splits; official test splits are only scored.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score  # type: ignore[import-untyped, unused-ignore]
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.device import select_device
from fusion.heads_graph import GraphHeads
from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig
from fusion.training.corrections import Correction, emotion_rows, intent_rows, read_corrections
from fusion.training.data_dir import default_data_dir
from fusion.understanding import (
    EKMAN,
    FUSION_WEIGHTS,
    GOEMOTIONS_TO_EKMAN,
    GOEMOTIONS_TO_SERVICE,
    OUT_OF_SCOPE,
    RAVDESS,
    RAVDESS_TO_SERVICE,
    SERVICE_EMOTIONS,
    WEIGHTS_DIR,
    EmotionModel,
    EnsembleConfig,
    EnsembleMLP,
    FiLMConfig,
    IntentArtifact,
    IntentModel,
    LexicalBag,
    LexiconConfig,
    ServingHeads,
    expected_calibration_error,
    file_sha256,
    fit_temperature,
    lexical_ids,
    lexical_pack,
    load_intent,
    mapping_matrix,
    save_emotion,
    save_intent,
    shipped_precision,
)

# What `intent_probs` scores through, for the reports and the model card.
INTENT_SERVING = (
    "float16 weights as stored; on a CPU, ONNX Runtime graphs (fusion.heads_graph.GraphHeads) "
    "with the members' first layer and the FiLM generator's last layer in 8 bits"
)
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "var" / "cache"
RUNS_DIR = REPO_ROOT / "var" / "runs" / "understanding"
DOCS_DIR = REPO_ROOT / "docs"
OOS_SPLITS = ("oos_train", "oos_val", "oos_test")
# Actors whose clips score the simulated text + speech pairs; the other actors' clips fit the
# fusion weights (out-of-fold speech predictions for both).
HELD_ACTORS = (19, 20, 21, 22)
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Labelled:
    texts: tuple[str, ...]
    labels: IntArray  # [N]


def load_banking77(data_dir: Path, split: str) -> tuple[Labelled, tuple[str, ...]]:
    folder = data_dir / "banking77" / "banking_data"
    intents = tuple(json.loads((folder / "categories.json").read_text()))
    index = {name: i for i, name in enumerate(intents)}
    with (folder / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([index[r["category"]] for r in rows], dtype=np.int64)
    return Labelled(tuple(r["text"] for r in rows), labels), intents


def load_clinc_oos(data_dir: Path, split: str) -> tuple[str, ...]:
    """CLINC150's out-of-scope utterances of one split: oos_train, oos_val or oos_test."""
    blob = json.loads((data_dir / "clinc150" / "data" / "data_full.json").read_text())
    return tuple(text for text, _ in blob[split])


@dataclass(frozen=True, slots=True)
class GoEmotions:
    texts: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]  # indices into `names` (multi-label)
    names: tuple[str, ...]


def load_goemotions(data_dir: Path, split: str, taxonomy: str = "original") -> GoEmotions:
    """One official split; taxonomy "original" (28 labels) or "ekman" (7)."""
    folder = data_dir / "goemotions" / "data" / taxonomy
    names = tuple(folder.joinpath("labels.txt").read_text().split())
    texts: list[str] = []
    labels: list[tuple[int, ...]] = []
    with (folder / f"{split}.tsv").open(encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            texts.append(parts[0])
            labels.append(tuple(int(x) for x in parts[1].split(",")))
    return GoEmotions(tuple(texts), tuple(labels), names)


# ---------------------------------------------------------------------------- text features


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def text_features(
    texts: Sequence[str],
    device: torch.device,
    cache_dir: Path = CACHE_DIR,
    batch: int = 64,
    desc: str = "text embeddings",
) -> FloatArray:
    """MiniLM embeddings [N, 384], cached by the texts' digest (the encoder is fixed).

    Texts are encoded in length order so a batch pads to similar lengths (about twice as
    fast on long-tailed Reddit comments); mean pooling is masked, so order does not matter.
    """
    path = cache_dir / f"minilm-{_digest(texts)}.npy"
    if path.exists():
        cached: FloatArray = np.load(path).astype(np.float32)
        if cached.shape == (len(texts), EMBEDDING_DIM):
            return cached
    encoder = TextEncoder(device, TextEncoderConfig())
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch"):
        rows = order[start : start + batch]
        out[rows] = encoder.encode([texts[i] for i in rows])
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def _corrections(args: argparse.Namespace) -> list[Correction]:
    path: Path | None = args.corrections
    return read_corrections(path) if path is not None else []


def _correction_features(texts: Sequence[str], device: torch.device) -> FloatArray:
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return text_features(texts, device, desc="corrections")


# ---------------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class FitConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    seed: int = 0
    # Gaussian noise on each training embedding, in units of a unit vector's typical entry
    # (1/sqrt(dim)), so that a training sentence's neighbours keep its label. Off by default:
    # its gain on the intent head's validation was within noise (docs/understanding.md).
    input_noise: float = 0.0


def fit_member(
    config: EnsembleConfig,
    fit: FitConfig,
    x: FloatArray,
    targets: FloatArray,
    progress: bool = True,
    desc: str = "member",
) -> EnsembleMLP:
    """One MLP (M = 1) on rows `x` [N, D] with target distributions [N, C]; seeded."""
    return fit_lexical_member(config, fit, x, targets, progress=progress, desc=desc)[0]


def fit_lexical_member(
    config: EnsembleConfig,
    fit: FitConfig,
    x: FloatArray,
    targets: FloatArray,
    grams: Sequence[list[int]] = (),
    lexicon: LexiconFit | None = None,
    progress: bool = True,
    desc: str = "member",
) -> tuple[EnsembleMLP, LexicalBag]:
    """`fit_member` with a lexical branch trained beside the MLP on the rows' `lexical_ids`
    `grams` when `lexicon` has buckets (else the branch stays empty and the MLP trains as
    `fit_member`'s, bit for bit)."""
    torch.manual_seed(fit.seed)
    rng = np.random.default_rng(fit.seed)
    model = EnsembleMLP(replace(config, members=1))
    buckets = lexicon.buckets if lexicon is not None else 0
    bag = LexicalBag(LexiconConfig(buckets, 1, config.out_dim))
    groups: list[dict[str, Any]] = [
        {"params": list(model.parameters()), "lr": fit.lr, "weight_decay": fit.weight_decay}
    ]
    if lexicon is not None and buckets:
        groups.append(
            {"params": [bag.table], "lr": lexicon.lr, "weight_decay": lexicon.weight_decay}
        )
    opt = torch.optim.AdamW(groups)
    steps = fit.epochs * -(-len(x) // fit.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=steps
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(targets)
    smooth = fit.label_smoothing / targets.shape[1]
    noise = fit.input_noise / math.sqrt(x.shape[1])
    model.train()
    for _ in tqdm(range(fit.epochs), desc=desc, unit="ep", leave=False, disable=not progress):
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(x), fit.batch_size):
            b = order[start : start + fit.batch_size]
            target = yt[b] * (1.0 - fit.label_smoothing) + smooth  # [b, C]
            xb = xt[b] + noise * torch.randn_like(xt[b]) if noise else xt[b]
            logits = model(xb)[0]  # [b, C]
            if buckets:
                logits = logits + bag(lexical_pack([grams[i] for i in b.tolist()]))[0]
            logp = torch.log_softmax(logits, dim=-1)
            loss = -(target * logp).sum(dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            opt.step()
            sched.step()
    return model.eval(), bag.eval()


@torch.inference_mode()
def member_logits(model: nn.Module, x: FloatArray, batch: int = 4096) -> FloatArray:
    """[M, N, C] logits of an ensemble (no FiLM)."""
    parts = [model(torch.from_numpy(x[s : s + batch])).float() for s in range(0, len(x), batch)]
    out: FloatArray = torch.cat(parts, dim=1).numpy()
    return out


def one_hot(labels: IntArray, n: int) -> FloatArray:
    out = np.zeros((len(labels), n), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def softmax(logits: npt.NDArray[np.floating[Any]], t: float = 1.0) -> FloatArray:
    z = logits / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def stratified_folds(labels: IntArray, k: int, seed: int) -> IntArray:
    """Fold id per row: each label's rows shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % k
    return fold


def macro_f1(true: IntArray, pred: IntArray, n: int) -> float:
    return float(f1_score(true, pred, labels=list(range(n)), average="macro", zero_division=0))


def tune_prior_correction(
    log_p: FloatArray, true: IntArray, log_prior: FloatArray
) -> tuple[float, FloatArray]:
    """alpha in [0, 1] maximising macro-F1 of argmax(log p - alpha * log prior), and the
    resulting per-class offsets.

    Macro-F1 weighs rare classes like common ones; an argmax of calibrated probabilities
    favours the common ones. One shared exponent carries over from a development split to
    test better than a free offset per class (which overfits the rare classes' few rows).
    Fit on a development split only.
    """
    n = log_p.shape[1]
    alphas = np.linspace(0.0, 1.0, 21)
    scores = [macro_f1(true, (log_p - a * log_prior).argmax(1), n) for a in alphas]
    alpha = float(alphas[int(np.argmax(scores))])
    return alpha, (-alpha * log_prior).astype(np.float32)


def logistic_baseline(x: FloatArray, y: IntArray, seed: int) -> Any:
    """The do-it-yourself baseline: frozen embeddings + logistic regression (C=10)."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped, unused-ignore]

    return LogisticRegression(C=10.0, max_iter=3000, random_state=seed).fit(x, y)


# ---------------------------------------------------------------------------- intent


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


@dataclass(frozen=True, slots=True)
class Sessions:
    """Simulated sessions reduced to what the intent head reads."""

    text_index: IntArray  # [N] utterance row
    intent: IntArray  # [N]
    ambiguous: npt.NDArray[np.bool_]  # [N]
    profile: FloatArray  # [N, 128] profile vector before the message
    has_profile: npt.NDArray[np.bool_]  # [N]


def load_fusion(device: torch.device) -> tuple[Any, str]:
    """The shipped fusion model and the sha256 of the very bytes it was loaded from."""
    from fusion.inference import FusionInference

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
    fusion: Any,
    progress: bool,
) -> tuple[Sessions, dict[str, Any]]:
    """Sessions of `fusion.training.simulator` over the utterances `labels`, with the profile a user
    would have before writing: the shipped fusion model's vector of their behaviour and, when
    the session has it, speech (the text is left out: the head sees it directly)."""
    from fusion.inference import FuseRequest
    from fusion.profile_update import update_state
    from fusion.speech import SpeechFeaturizer, ravdess_features
    from fusion.training.simulator import SimulatorConfig, simulate

    ravdess = data_dir / "ravdess_speech_16k_flac"
    featurizer = SpeechFeaturizer(fusion.device)
    speech_x, emotions, actors, files = ravdess_features(
        ravdess, featurizer, cache_dir=CACHE_DIR, progress=progress
    )
    with (ravdess / "labels.csv").open(newline="") as f:
        gender_of = {row["file"]: row["gender"] for row in csv.DictReader(f)}
    config = replace(SimulatorConfig(), seed=seed, n_sessions=n_sessions)
    bench = simulate(
        config,
        intents,
        labels.tolist(),
        emotions,
        [int(a) for a in actors],
        [gender_of[f] for f in files],
    )
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
    info = {"seed": seed, "n_sessions": n_sessions, "with_profile": int(present.sum())}
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
    fusion: Any,
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
    train, intents = load_banking77(data_dir, "train")
    test, _ = load_banking77(data_dir, "test")
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


def train_intent(args: argparse.Namespace, data_dir: Path, device: torch.device) -> dict[str, Any]:
    progress = not args.no_progress
    train, intents = load_banking77(data_dir, "train")
    test, _ = load_banking77(data_dir, "test")
    oos = len(intents)
    x_tr = text_features(train.texts, device, desc="Banking77 train")
    x_oos = {s: text_features(load_clinc_oos(data_dir, s), device, desc=s) for s in OOS_SPLITS}
    report: dict[str, Any] = {
        "data": {
            "banking77_train": len(train.texts),
            "banking77_test": len(test.texts),
            **{s: len(v) for s, v in x_oos.items()},
        }
    }

    corrected = intent_rows(_corrections(args), intents)
    x_fix = _correction_features(corrected[0], device)
    report["data"]["corrections"] = {"used": len(corrected[0]), "skipped": corrected[2]}

    # Cross-fitted ensemble: member k never sees fold k, which gives every training utterance
    # an out-of-sample prediction for calibration, the threshold and the FiLM stage.
    fold = stratified_folds(train.labels, args.members, args.seed)
    trunk_cfg = EnsembleConfig(members=1, hidden=args.hidden, out_dim=oos + 1)
    fit = FitConfig(epochs=args.epochs, seed=args.seed, input_noise=args.input_noise)
    lexicon = LexiconFit(args.lexicon_buckets, args.lexicon_lr)
    buckets = max(args.lexicon_buckets, 1)
    g_tr = [lexical_ids(t, buckets) for t in train.texts]
    g_oos = {s: [lexical_ids(t, buckets) for t in load_clinc_oos(data_dir, s)] for s in OOS_SPLITS}
    g_fix = [lexical_ids(t, buckets) for t in corrected[0]]
    members: list[EnsembleMLP] = []
    bags: list[LexicalBag] = []
    oof = np.zeros((len(train.texts), oos + 1), dtype=np.float32)
    oos_val_logits = np.zeros((len(x_oos["oos_val"]), oos + 1), dtype=np.float32)
    oos_val_member = np.arange(len(x_oos["oos_val"])) % args.members
    for k in tqdm(range(args.members), desc="intent members", unit="member", disable=not progress):
        rows = fold != k
        # Operators' corrections join every member's training rows: they are never held out,
        # since the out-of-fold predictions only score Banking77's own rows.
        x = np.concatenate([x_tr[rows], x_oos["oos_train"], x_fix])
        y = np.concatenate(
            [train.labels[rows], np.full(len(x_oos["oos_train"]), oos), corrected[1]]
        )
        grams = [g for g, r in zip(g_tr, rows, strict=True) if r] + g_oos["oos_train"] + g_fix
        member_fit = replace(fit, seed=args.seed * 100 + k)
        # Members are checkpointed by everything that determines them, so a rerun (say, after
        # the fusion weights changed) only redoes the FiLM stage.
        key = _digest(
            [
                *train.texts,
                *corrected[0],
                json.dumps(
                    [
                        corrected[1].tolist(),
                        asdict(trunk_cfg),
                        asdict(member_fit),
                        asdict(lexicon),
                        k,
                    ]
                ),
            ]
        )
        checkpoint = RUNS_DIR / "members" / f"intent-{key}.pt"
        if checkpoint.exists():
            member = EnsembleMLP(trunk_cfg)
            bag = LexicalBag(LexiconConfig(lexicon.buckets, 1, oos + 1))
            saved = torch.load(checkpoint, weights_only=True)
            member.load_state_dict(saved["mlp"])
            bag.load_state_dict(saved["lexicon"])
            member.eval()
            bag.eval()
        else:
            member, bag = fit_lexical_member(
                trunk_cfg,
                member_fit,
                x,
                one_hot(y, oos + 1),
                grams,
                lexicon,
                progress,
                f"member {k + 1}",
            )
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"mlp": member.state_dict(), "lexicon": bag.state_dict()}, checkpoint)
        members.append(member)
        bags.append(bag)
        held = np.flatnonzero(fold == k)
        oof[held] = text_logits(member, bag, x_tr[held], [g_tr[i] for i in held])[0]
        mine = np.flatnonzero(oos_val_member == k)
        oos_val_logits[mine] = text_logits(
            member, bag, x_oos["oos_val"][mine], [g_oos["oos_val"][i] for i in mine]
        )[0]
    val_logits = np.concatenate([oof, oos_val_logits])
    val_labels = np.concatenate([train.labels, np.full(len(oos_val_logits), oos)])
    temperature = fit_temperature(torch.from_numpy(val_logits), torch.from_numpy(val_labels))
    val_probs = softmax(val_logits, temperature)
    threshold = choose_threshold(val_probs, val_labels, oos, args.max_in_scope_drop)
    report["validation"] = {
        "note": "out-of-fold predictions on Banking77 train + CLINC150 oos_val",
        "temperature": temperature,
        "oos_threshold": threshold,
        "ece_before": expected_calibration_error(softmax(val_logits), val_labels),
        "ece_after": expected_calibration_error(val_probs, val_labels),
        "no_threshold": intent_report(val_probs, val_labels, oos, 0.0),
        "with_threshold": intent_report(val_probs, val_labels, oos, threshold),
    }

    model = IntentModel(
        replace(trunk_cfg, members=args.members),
        FiLMConfig(target=args.hidden),
        LexiconConfig(lexicon.buckets, args.members, oos + 1),
    )
    model.trunk = EnsembleMLP.stack(members)
    model.lexicon = LexicalBag.stack(bags)
    model.eval()

    # Profile conditioning, trained and measured on simulated sessions only.
    fusion, fusion_sha = load_fusion(device)
    film_train, info_train = simulated_sessions(
        data_dir, intents, train.labels, args.sim_seed, args.sessions, fusion, progress
    )
    fit_film(
        model,
        fold,
        x_tr,
        g_tr,
        film_train,
        FitConfig(epochs=args.film_epochs, lr=3e-3, weight_decay=1e-4, seed=args.seed),
        progress,
    )
    # Validation for the FiLM stage: other simulated sessions over the same (training)
    # utterances, each through its out-of-fold member, as in training.
    val, _ = simulated_sessions(
        data_dir, intents, train.labels, args.sim_seed + 1, args.sessions // 2, fusion, progress
    )
    report["profile_validation"] = film_validation(model, fold, x_tr, g_tr, val)
    print(f"FiLM validation (simulated): {report['profile_validation']}")
    # The test figures, as `--score-shipped` computes them for the shipped weights. The FiLM
    # stage leaves the text-only path as it was (an absent profile is the identity).
    figures = served_intent_figures(
        model,
        temperature,
        threshold,
        data_dir,
        device,
        seed=args.seed,
        bench_seed=args.bench_seed,
        n_sessions=args.sessions,
        fusion=fusion,
        train_sessions=info_train,
        progress=progress,
    )
    # The report's entries in their usual order.
    report = {
        "data": report["data"],
        "baseline_logreg_test_accuracy": figures["baseline_logreg_test_accuracy"],
        "validation": report["validation"],
        "test": figures["test"],
        "oos_test": figures["oos_test"],
        "profile_validation": report["profile_validation"],
        "profile": figures["profile"],
    }

    report["artifact"] = {
        "members": args.members,
        "hidden": args.hidden,
        "epochs": args.epochs,
        "input_noise": args.input_noise,
        "lexicon_buckets": lexicon.buckets,
        "lexicon_lr": lexicon.lr,
        "film_epochs": args.film_epochs,
        "serving": INTENT_SERVING,
        "profile_space": fusion_sha,
    }
    if not args.no_publish:
        save_intent(
            args.out_dir / "intent.pt",
            IntentArtifact(
                model,
                (*intents, OUT_OF_SCOPE),
                temperature,
                threshold,
                fusion_sha,
                {"command": report.get("command", ""), "seed": args.seed},
            ),
        )
    return report


def score_shipped_intent(
    args: argparse.Namespace, data_dir: Path, device: torch.device, previous: dict[str, Any]
) -> dict[str, Any]:
    """The shipped head's (`args.out_dir / "intent.pt"`) test figures recomputed through the
    served path with its own temperature and threshold, nothing trained: `previous` (the
    report of the run that made the weights) with `baseline_logreg_test_accuracy`, `test`,
    `oos_test` and `profile` replaced, and a `scored` entry begun (the caller completes it)."""
    path = args.out_dir / "intent.pt"
    weights_sha = file_sha256(path)
    art = load_intent(path)
    _, intents = load_banking77(data_dir, "train")
    if art.intents != (*intents, OUT_OF_SCOPE):
        raise ValueError(f"{path}: its intents are not Banking77's + {OUT_OF_SCOPE}")
    trained = previous.get("validation", {})
    if not (
        math.isclose(trained.get("temperature", math.nan), art.temperature, rel_tol=1e-6)
        and math.isclose(trained.get("oos_threshold", math.nan), art.oos_threshold, abs_tol=1e-9)
    ):
        print(
            f"warning: {path} has temperature {art.temperature} and threshold "
            f"{art.oos_threshold}, the report's training run {trained.get('temperature')} and "
            f"{trained.get('oos_threshold')}: the report may describe other weights",
            file=sys.stderr,
        )
    bench = previous.get("profile", {}).get("benchmark_sessions", {})
    if (bench.get("seed"), bench.get("n_sessions")) != (args.bench_seed, args.sessions):
        print(
            f"warning: benchmark sessions seed {args.bench_seed} x {args.sessions}, the "
            f"training run's {bench.get('seed')} x {bench.get('n_sessions')}",
            file=sys.stderr,
        )
    fusion, fusion_sha = load_fusion(device)
    # As the server decides (`Understanding`): a profile from other fusion weights is ignored.
    use_profile = art.profile_space is None or art.profile_space == fusion_sha
    scored: dict[str, Any] = {
        "serving": INTENT_SERVING,
        "weights_sha256": weights_sha,
    }
    if not use_profile:
        scored["note"] = (
            f"the head's profile space {art.profile_space} is not the fusion weights' "
            f"{fusion_sha}: the profile benchmark ran text-only, as the server would"
        )
        print(f"warning: {scored['note']}", file=sys.stderr)
    art.model.eval()
    figures = served_intent_figures(
        art.model,
        art.temperature,
        art.oos_threshold,
        data_dir,
        device,
        seed=args.seed,
        bench_seed=args.bench_seed,
        n_sessions=args.sessions,
        fusion=fusion,
        train_sessions=previous["profile"]["train_sessions"],
        use_profile=use_profile,
        progress=not args.no_progress,
    )
    report = {k: v for k, v in previous.items() if k != "scored"}
    report.update(figures)
    report["scored"] = scored
    return report


# ---------------------------------------------------------------------------- emotion


def soft_targets(labels: Sequence[tuple[int, ...]], n: int) -> FloatArray:
    """Multi-label rows as distributions: each of a row's labels gets an equal share."""
    out = np.zeros((len(labels), n), dtype=np.float32)
    for i, row in enumerate(labels):
        out[i, list(row)] = 1.0 / len(row)
    return out


@dataclass(frozen=True, slots=True)
class LexiconFit:
    # Hashed gram buckets of the lexical cues; 0: the embedding MLP alone. The shipped head's
    # settings (4,096 buckets, grouped loss 0.5) are the command line's defaults.
    buckets: int = 0
    # The table sees each gram in few rows; a higher rate than the MLP's lets rare cues move.
    lr: float = 5e-3
    weight_decay: float = 0.0
    # Weight of the cross-entropy of the grouped distributions (service and Ekman sets) next
    # to the 28-way one: the head is judged on the groups, not on the fine labels.
    grouped: float = 0.0


def fit_text_member(
    config: EnsembleConfig,
    fit: FitConfig,
    lexicon: LexiconFit,
    x: FloatArray,
    grams: Sequence[list[int]],
    targets: FloatArray,
    groupings: Sequence[FloatArray] = (),
    progress: bool = True,
    desc: str = "member",
) -> tuple[EnsembleMLP, LexicalBag]:
    """One text member (M = 1): the embedding MLP and the lexical branch trained together on
    rows `x` [N, 384] and their `lexical_ids`, with target distributions [N, C]; `groupings`
    ([C, K] 0/1 matrices) add the grouped cross-entropies weighted `lexicon.grouped`."""
    torch.manual_seed(fit.seed)
    rng = np.random.default_rng(fit.seed)
    mlp = EnsembleMLP(replace(config, members=1))
    bag = LexicalBag(LexiconConfig(lexicon.buckets, 1, config.out_dim))
    opt = torch.optim.AdamW(
        [
            {"params": list(mlp.parameters()), "lr": fit.lr, "weight_decay": fit.weight_decay},
            {"params": [bag.table], "lr": lexicon.lr, "weight_decay": lexicon.weight_decay},
        ]
    )
    steps = fit.epochs * -(-len(x) // fit.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[fit.lr, lexicon.lr], total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(targets)
    maps = [torch.from_numpy(m) for m in groupings] if lexicon.grouped else []
    mlp.train()
    for _ in tqdm(range(fit.epochs), desc=desc, unit="ep", leave=False, disable=not progress):
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(x), fit.batch_size):
            b = order[start : start + fit.batch_size]
            logits = mlp(xt[b])[0]
            if lexicon.buckets:
                logits = logits + bag(lexical_pack([grams[i] for i in b.tolist()]))[0]
            logp = torch.log_softmax(logits, dim=-1)
            loss = -(yt[b] * logp).sum(dim=-1).mean()
            for m in maps:
                grouped = (logp.exp() @ m).clamp_min(1e-8).log()
                loss = loss - lexicon.grouped * ((yt[b] @ m) * grouped).sum(dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            opt.step()
            sched.step()
    return mlp.eval(), bag.eval()


@torch.inference_mode()
def text_logits(
    mlp: EnsembleMLP,
    bag: LexicalBag,
    x: FloatArray,
    grams: Sequence[list[int]],
    batch: int = 4096,
) -> FloatArray:
    """[M, N, C] logits of the text members, the lexical branch included."""
    parts = []
    for s in range(0, len(x), batch):
        logits = mlp(torch.from_numpy(x[s : s + batch]))
        if bag.config.buckets:
            logits = logits + bag(lexical_pack(grams[s : s + batch]))
        parts.append(logits)
    out: FloatArray = torch.cat(parts, dim=1).numpy()
    return out


def single_label(labels: Sequence[tuple[int, ...]], matrix: FloatArray) -> IntArray:
    """Target class per row after mapping (matrix [source, target]), -1 when the mapped
    labels disagree (the row is left out of single-label figures)."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, row in enumerate(labels):
        targets = {int(np.argmax(matrix[j])) for j in row}
        if len(targets) == 1:
            out[i] = targets.pop()
    return out


def emotion_scores(
    probs: FloatArray, decision: FloatArray, true: IntArray, n: int
) -> dict[str, Any]:
    keep = true >= 0
    pred = decision[keep].argmax(1)
    return {
        "rows": int(keep.sum()),
        "accuracy": float((pred == true[keep]).mean()),
        "macro_f1": macro_f1(true[keep], pred, n),
        "ece": expected_calibration_error(probs[keep], true[keep]),
    }


def actor_folds(actors: IntArray, k: int) -> IntArray:
    """Speaker-independent folds: sorted actor ids dealt round-robin (odd ids are male, so
    every fold hears both genders)."""
    ids = sorted(set(actors.tolist()))
    fold_of = {a: i % k for i, a in enumerate(ids)}
    return np.array([fold_of[int(a)] for a in actors], dtype=np.int64)


def train_emotion(args: argparse.Namespace, data_dir: Path, device: torch.device) -> dict[str, Any]:
    progress = not args.no_progress
    split = {s: load_goemotions(data_dir, s) for s in ("train", "dev", "test")}
    names = split["train"].names
    x = {s: text_features(g.texts, device, desc=f"GoEmotions {s}") for s, g in split.items()}
    to_service = mapping_matrix(names, SERVICE_EMOTIONS, GOEMOTIONS_TO_SERVICE)  # [28, 7]
    to_ekman = mapping_matrix(names, EKMAN, GOEMOTIONS_TO_EKMAN)  # [28, 7]
    ekman = {s: single_label(g.labels, to_ekman) for s, g in split.items()}
    service = {s: single_label(g.labels, to_service) for s, g in split.items()}
    report: dict[str, Any] = {"data": {s: len(g.texts) for s, g in split.items()}}

    # The baseline's recipe: logistic regression on the single-label Ekman training rows.
    keep = ekman["train"] >= 0
    baseline = logistic_baseline(x["train"][keep], ekman["train"][keep], args.seed)
    test_keep = ekman["test"] >= 0
    base_pred = baseline.predict(x["test"][test_keep])
    report["baseline_logreg_ekman_test"] = {
        "rows": int(test_keep.sum()),
        "accuracy": float((base_pred == ekman["test"][test_keep]).mean()),
        "macro_f1": macro_f1(ekman["test"][test_keep], base_pred, len(EKMAN)),
    }
    print(f"baseline Ekman-7: {report['baseline_logreg_ekman_test']}")

    # Text head: members over all 28 labels (multi-label rows as soft targets), different seeds,
    # each an embedding MLP plus a linear model over the message's hashed grams.
    text_cfg = EnsembleConfig(members=1, hidden=args.text_hidden, out_dim=len(names))
    fit = FitConfig(epochs=args.text_epochs, seed=args.seed, label_smoothing=0.0)
    lexicon = LexiconFit(args.lexicon_buckets, args.lexicon_lr, grouped=args.grouped_loss)
    targets = soft_targets(split["train"].labels, len(names))
    fix_texts, fix_targets, skipped = emotion_rows(_corrections(args), names, GOEMOTIONS_TO_SERVICE)
    report["data"]["corrections"] = {"used": len(fix_texts), "skipped": skipped}
    x_fit = np.concatenate([x["train"], _correction_features(fix_texts, device)])
    grams = {
        s: [lexical_ids(t, lexicon.buckets) if lexicon.buckets else [] for t in texts]
        for s, texts in (*((s, g.texts) for s, g in split.items()), ("fix", fix_texts))
    }
    grams_fit = grams["train"] + grams["fix"]
    targets = np.concatenate([targets, fix_targets])
    members = [
        fit_text_member(
            text_cfg,
            replace(fit, seed=args.seed * 100 + k),
            lexicon,
            x_fit,
            grams_fit,
            targets,
            (to_service, to_ekman),
            progress,
            f"text member {k + 1}",
        )
        for k in tqdm(range(args.text_members), desc="text members", disable=not progress)
    ]
    text_mlp = EnsembleMLP.stack([m for m, _ in members])
    text_bag = LexicalBag.stack([b for _, b in members])
    logits = {s: text_logits(text_mlp, text_bag, x[s], grams[s]) for s in split}
    dev_single = np.array([r[0] if len(r) == 1 else -1 for r in split["dev"].labels])
    rows = torch.from_numpy(np.flatnonzero(dev_single >= 0))
    t_text = fit_temperature(
        torch.from_numpy(logits["dev"])[:, rows], torch.from_numpy(dev_single)[rows]
    )

    def grouped(s: str, matrix: FloatArray) -> FloatArray:
        out: FloatArray = (softmax(logits[s], t_text).mean(0) @ matrix).astype(np.float32)
        return out

    def logp(p: FloatArray) -> FloatArray:
        out: FloatArray = np.log(np.clip(p, 1e-6, None)).astype(np.float32)
        return out

    def decision_rule(
        matrix: FloatArray, labels: dict[str, IntArray], classes: int
    ) -> tuple[dict[str, Any], FloatArray]:
        """Scores on test with and without the dev-tuned prior correction, and its offsets."""
        prior = (targets @ matrix).mean(0)  # the training rows' class shares
        dev_p, test_p = grouped("dev", matrix), grouped("test", matrix)
        keep_dev = labels["dev"] >= 0
        alpha, offsets = tune_prior_correction(
            logp(dev_p[keep_dev]), labels["dev"][keep_dev], logp(prior)
        )
        block = {
            "argmax": emotion_scores(test_p, test_p, labels["test"], classes),
            "dev_tuned_offsets": emotion_scores(
                test_p, logp(test_p) + offsets, labels["test"], classes
            ),
            "alpha": alpha,
            "offsets": offsets.tolist(),
            "dev": {
                "argmax": emotion_scores(dev_p, dev_p, labels["dev"], classes),
                "dev_tuned_offsets": emotion_scores(
                    dev_p, logp(dev_p) + offsets, labels["dev"], classes
                ),
            },
        }
        return block, offsets

    report["text_ekman_test"], _ = decision_rule(to_ekman, ekman, len(EKMAN))
    report["text_service_test"], service_offsets = decision_rule(
        to_service, service, len(SERVICE_EMOTIONS)
    )
    n = len(SERVICE_EMOTIONS)
    report["text_service_test"]["class_counts"] = np.bincount(
        service["test"][service["test"] >= 0], minlength=n
    ).tolist()
    report["text_lexicon"] = asdict(lexicon)
    # Callers that do not pass the message text get the embedding MLP alone.
    no_text = softmax(text_logits(text_mlp, LexicalBag(LexiconConfig()), x["test"], []), t_text)
    no_text_ekman = (no_text.mean(0) @ to_ekman).astype(np.float32)
    no_text_service = (no_text.mean(0) @ to_service).astype(np.float32)
    report["text_without_texts_test"] = {
        "ekman": emotion_scores(no_text_ekman, no_text_ekman, ekman["test"], len(EKMAN)),
        "service": emotion_scores(no_text_service, no_text_service, service["test"], n),
    }
    dev_service, test_service = grouped("dev", to_service), grouped("test", to_service)
    report["text_temperature"] = t_text
    print(f"text Ekman-7 test: {report['text_ekman_test']['dev_tuned_offsets']}")
    print(f"text service test: {report['text_service_test']['dev_tuned_offsets']}")

    speech_report, speech_mlp, speech_stats, t_speech, oof_speech, clips = train_speech_head(
        args, data_dir, device
    )
    report["speech"] = speech_report

    # Text + speech: no corpus has both, so pairs are simulated: a GoEmotions comment and a
    # RAVDESS clip with the same service emotion. Weights are fitted on dev comments paired
    # with clips of the actors 1-18; scored on test comments paired with clips of actors
    # 19-22.
    ravdess_service = mapping_matrix(RAVDESS, SERVICE_EMOTIONS, RAVDESS_TO_SERVICE)
    clip_service = np.array([SERVICE_EMOTIONS.index(RAVDESS_TO_SERVICE[e]) for e in clips[0]])
    speech_service = oof_speech @ ravdess_service  # [clips, 7]
    held = np.isin(clips[1], HELD_ACTORS)
    rng = np.random.default_rng(args.seed)

    def pairs(
        text_p: FloatArray, text_y: IntArray, clip_rows: npt.NDArray[np.bool_], per_class: int
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        t_rows: list[int] = []
        s_rows: list[int] = []
        ys: list[int] = []
        for c in range(n):
            texts = np.flatnonzero(text_y == c)
            sounds = np.flatnonzero(clip_rows & (clip_service == c))
            if len(texts) == 0 or len(sounds) == 0:
                continue
            t_rows += rng.choice(texts, per_class).tolist()
            s_rows += rng.choice(sounds, per_class).tolist()
            ys += [c] * per_class
        return text_p[t_rows], speech_service[s_rows], np.array(ys, dtype=np.int64)

    fit_t, fit_s, fit_y = pairs(dev_service, service["dev"], ~held, 300)
    w, bias = fit_product_of_experts(fit_t, fit_s, fit_y)
    ev_t, ev_s, ev_y = pairs(test_service, service["test"], held, 300)
    fused = softmax(w[0] * logp(ev_t) + w[1] * logp(ev_s) + bias)
    report["text_speech_fusion"] = {
        "simulated_pairs": True,
        "pairs_per_class": 300,
        "classes": [SERVICE_EMOTIONS[c] for c in sorted(set(ev_y.tolist()))],
        "weights": [float(w[0]), float(w[1])],
        "text_only": emotion_scores(ev_t, logp(ev_t) + service_offsets, ev_y, n),
        "speech_only": emotion_scores(ev_s, ev_s, ev_y, n),
        "fused": emotion_scores(fused, fused, ev_y, n),
    }
    print(f"text + speech (simulated pairs): {report['text_speech_fusion']}")

    model = EmotionModel(
        replace(text_cfg, members=args.text_members), speech_mlp.config, text_bag.config
    )
    model.text = text_mlp
    model.lexicon = text_bag
    model.speech = speech_mlp
    buffers = {
        "text_map": torch.from_numpy(to_service),
        "speech_map": torch.from_numpy(ravdess_service),
        "temperature": torch.tensor([t_text, t_speech]),
        "fusion_weight": torch.tensor([float(w[0]), float(w[1])]),
        "fusion_bias": torch.from_numpy(bias.astype(np.float32)),
        "text_offsets": torch.from_numpy(service_offsets),
        "speech_mean": torch.from_numpy(speech_stats[0]),
        "speech_std": torch.from_numpy(speech_stats[1]),
    }
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)
    if not args.no_publish:
        save_emotion(args.out_dir / "emotion.pt", model.eval(), {"seed": args.seed})
    return report


def fit_product_of_experts(
    text_p: FloatArray, speech_p: FloatArray, y: IntArray, steps: int = 300
) -> tuple[FloatArray, FloatArray]:
    """Weights (text, speech) and a class bias for `w_t log p_t + w_s log p_s + b` by NLL."""
    lt = torch.from_numpy(np.log(np.clip(text_p, 1e-6, None)))
    ls = torch.from_numpy(np.log(np.clip(speech_p, 1e-6, None)))
    target = torch.from_numpy(y)
    w = torch.ones(2, requires_grad=True)
    b = torch.zeros(text_p.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(w[0] * lt + w[1] * ls + b, target)
        loss = loss + 1e-3 * (b**2).sum()
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call, unused-ignore]
    return w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


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
    from fusion.asr import AsrConfig, SpeechRecognizer
    from fusion.speech import SpeechFeaturizer, read_ravdess_index
    from fusion.voice_emotion import ravdess_voice_features

    progress = not args.no_progress
    ravdess = data_dir / "ravdess_speech_16k_flac"
    recognizer = SpeechRecognizer(AsrConfig(device="cpu", workers=1, cpu_threads=args.threads))
    featurizer = SpeechFeaturizer(device)
    index = read_ravdess_index(ravdess)
    emotions = [c.emotion for c in index]
    actors = np.asarray([c.actor for c in index], dtype=np.int64)
    recorded, phoned = (
        ravdess_voice_features(
            ravdess, recognizer, featurizer, telephone=t, cache_dir=CACHE_DIR, progress=progress
        )
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


# ---------------------------------------------------------------------------- model cards


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def _reproduce(report: dict[str, Any]) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```sh",
        f".venv/bin/{report['command']}",
        "```",
        "",
        f"Run time {report['runtime_s'] / 60:.1f} min on {report['machine']}, {report['trained']}.",
        "",
    ]


def _corrections_used(report: dict[str, Any]) -> str:
    return str(report["data"].get("corrections", {}).get("used", 0))


def intent_card(report: dict[str, Any], path: Path) -> str:
    t, o, p, v = report["test"], report["oos_test"], report["profile"], report["validation"]
    size = path.stat().st_size / 1e6 if path.exists() else 0.0
    a = report["artifact"]
    text_only, conditioned = p["text_only"], p["profile_conditioned"]
    pv = report["profile_validation"]
    noise = (
        f", Gaussian input noise {a['input_noise']} / sqrt(384) in training"
        if a.get("input_noise")
        else ""
    )
    lexical = (
        f", each plus a linear model over the message's hashed words, symbols and bigrams "
        f"({a['lexicon_buckets']} buckets, the emotion head's hashing)"
        if a.get("lexicon_buckets")
        else ""
    )
    rows = [
        ("Banking77 test accuracy (no profile)", f"**{_pct(t['accuracy'])}**"),
        (
            "frozen MiniLM + logistic regression (C=10), same run",
            _pct(report["baseline_logreg_test_accuracy"]),
        ),
        ("operators' label corrections among the training rows", _corrections_used(report)),
        (
            "Banking77 test + CLINC150 oos_test: in-scope accuracy",
            _pct(o["in_scope_accuracy"]),
        ),
        (
            "same: out-of-scope recall / precision",
            f"{o['oos_recall']:.3f} / {o['oos_precision']:.3f}",
        ),
        ("Banking77 test ECE (15 bins, calibrated)", f"{t['ece']:.4f}"),
        (
            f"validation ECE before / after temperature {v['temperature']:.2f}",
            f"{v['ece_before']:.4f} / {v['ece_after']:.4f}",
        ),
        (
            "empty profile: Banking77 test accuracy (max. probability change)",
            f"{_pct(p['empty_profile_test_accuracy'])} "
            f"({p['empty_profile_max_abs_prob_diff']:.1e})",
        ),
        (
            "simulated benchmark, ambiguous subset: text-only / with profile",
            f"{_pct(text_only['ambiguous'])} / {_pct(conditioned['ambiguous'])}",
        ),
        (
            "simulated validation (train utterances, out-of-fold), ambiguous: "
            "text-only / with profile",
            f"{_pct(pv['text_only_ambiguous'])} / {_pct(pv['profile_conditioned_ambiguous'])}",
        ),
        (
            "simulated benchmark, all sessions: text-only / with profile",
            f"{_pct(text_only['all'])} / {_pct(conditioned['all'])}",
        ),
    ]
    return "\n".join(
        [
            "# Model card: intent.pt",
            "",
            f"Intent head, {size:.1f} MB (float16): an ensemble of {a['members']} "
            f"one-hidden-layer MLPs ({a['hidden']} GELU units, dropout{noise}) over the frozen "
            f"384-d all-MiniLM-L6-v2 sentence embedding{lexical}, 77 Banking77 intents + "
            "out-of-scope; "
            "a FiLM generator (128 -> 128 -> 2 x hidden) modulates the hidden layer from the "
            "user's 128-d profile vector and is the identity when there is no profile. Loaded "
            "offline by `fusion.understanding.Understanding` and served, on a CPU, as ONNX "
            "Runtime graphs (`fusion.heads_graph.GraphHeads`: the float16 weights as stored, "
            "the members' first layer and the FiLM generator's last layer quantised to 8 bits "
            "at load time, per block of 128 inputs); every test figure below went through that "
            "path"
            + (
                ", with the message texts passed (`predict_many(..., texts=...)`), as the "
                "server does; without them the head reads the embedding alone"
                if lexical
                else ""
            )
            + ". Design and figures: docs/understanding.md.",
            "",
            "## Data and licences",
            "",
            "- Banking77 (PolyAI), train 10,003 / test 3,080, **CC BY 4.0**.",
            "- CLINC150 (oos-eval) out-of-scope utterances: oos_train (100) trains the "
            "out-of-scope class, oos_val (100) sets the threshold, oos_test (1,000) is only "
            "scored. **CC BY 3.0**.",
            "- The FiLM generator was trained on **simulated** sessions "
            "(`fusion.training.simulator`: "
            "Banking77 train utterances, simulated behaviour, RAVDESS clips) through the shipped "
            f"fusion model (`fusion/weights/fusion.pt`, sha256 `{a['profile_space'][:16]}...`). "
            "With other fusion weights the profile is ignored (text-only path). RAVDESS is "
            "**CC BY-NC-SA 4.0, non-commercial**, and the FiLM part inherits that restriction.",
            "",
            "## Split",
            "",
            f"Banking77 train is dealt into {a['members']} stratified folds; member k trains on "
            "the others (plus oos_train). The out-of-fold predictions (and oos_val) choose the "
            "temperature and the out-of-scope threshold. The official test split is only scored.",
            "",
            "## Metrics",
            "",
            *_table(rows),
            "",
            *_rescored(report),
            *_reproduce(report),
        ]
    )


def _rescored(report: dict[str, Any]) -> list[str]:
    """A note on figures recomputed by `--score-shipped`, when they were."""
    s = report.get("scored")
    if not s:
        return []
    return [
        f"The test figures above were re-scored on {s['date']} from the shipped weights "
        f"through the serving path, without retraining (`.venv/bin/{s['command']}`; serving: "
        f"{s['serving']}). The validation figures are the training run's."
        + (f" Note: {s['note']}." if s.get("note") else ""),
        "",
    ]


def emotion_card(report: dict[str, Any], path: Path) -> str:
    size = path.stat().st_size / 1e6 if path.exists() else 0.0
    ek, sv = report["text_ekman_test"], report["text_service_test"]
    sp, fu = report["speech"], report["text_speech_fusion"]
    everyone, phoned, later = sp["all_actors"], sp["all_actors_telephone"], sp["actors_19_22"]
    tuned, svt = ek["dev_tuned_offsets"], sv["dev_tuned_offsets"]
    t, s, f = fu["text_only"], fu["speech_only"], fu["fused"]
    buckets = report["text_lexicon"]["buckets"]
    lexical = (
        f", each plus a linear model over the message's hashed words, symbols and bigrams "
        f"({buckets} buckets)"
        if buckets
        else ""
    )
    rows = [
        (
            f"GoEmotions Ekman-7 test, single-label rows ({tuned['rows']}): macro-F1",
            f"**{tuned['macro_f1']:.3f}** (plain argmax {ek['argmax']['macro_f1']:.3f}; "
            f"dev {ek['dev']['dev_tuned_offsets']['macro_f1']:.3f})",
        ),
        (
            "same, frozen MiniLM + logistic regression (C=10), same run",
            f"{report['baseline_logreg_ekman_test']['macro_f1']:.3f}",
        ),
        ("operators' label corrections among the training rows", _corrections_used(report)),
        (
            f"GoEmotions service-7 test, single-label rows ({svt['rows']}): "
            "accuracy / macro-F1 / ECE",
            f"{_pct(svt['accuracy'])} / {svt['macro_f1']:.3f} / {sv['argmax']['ece']:.4f}",
        ),
        (
            "same, plain argmax: accuracy / macro-F1",
            f"{_pct(sv['argmax']['accuracy'])} / {sv['argmax']['macro_f1']:.3f}",
        ),
        (
            f"RAVDESS 8-class, leave-actors-out: {everyone['clips']} clips of "
            f"{sum(len(a) for a in sp['fold_actors'].values())} actors in {sp['folds']} folds",
            f"**{_pct(everyone['accuracy_8'])}** "
            f"(logistic regression {_pct(everyone['baseline_logreg_accuracy_8'])}); "
            f"macro-F1 {everyone['macro_f1_8']:.3f}, ECE {everyone['ece_8']:.4f}",
        ),
        (
            "same clips through the telephone path (8 kHz mu-law)",
            f"{_pct(phoned['accuracy_8'])}",
        ),
        ("same, actors 19-22 only", f"{_pct(later['accuracy_8'])}"),
        (
            "RAVDESS service-7 accuracy / macro-F1, all actors",
            f"{_pct(everyone['service']['accuracy'])} / {everyone['service']['macro_f1']:.3f}",
        ),
        (
            "text + speech, **simulated pairs**: text / speech / fused accuracy",
            f"{_pct(t['accuracy'])} / {_pct(s['accuracy'])} / {_pct(f['accuracy'])}",
        ),
        (
            "same, macro-F1",
            f"{t['macro_f1']:.3f} / {s['macro_f1']:.3f} / {f['macro_f1']:.3f}",
        ),
    ]
    return "\n".join(
        [
            "# Model card: emotion.pt",
            "",
            f"Emotion heads, {size:.1f} MB (float16). Service emotions: "
            f"{', '.join(SERVICE_EMOTIONS)}. A text head (ensemble of MLPs over the frozen "
            f"MiniLM embedding{lexical}; GoEmotions' 28 labels) and a speech head (ensemble "
            "of MLPs over the 392-d `fusion.voice_emotion` features: Whisper tiny.en's "
            "encoder states averaged over the utterance and its prosody; RAVDESS's 8 labels), each "
            "summed onto the service emotions and combined as a weighted product of experts "
            "when both are present. Mappings and figures: docs/understanding.md.",
            "",
            "## Data and licences",
            "",
            "- GoEmotions (Demszky et al. 2020), official train/dev/test, **Apache-2.0**.",
            "- RAVDESS speech, actors 01-22 (Livingstone & Russo 2018), **CC BY-NC-SA 4.0: "
            "non-commercial**. The speech head, and so these weights, inherit that restriction: "
            "non-commercial use only, with attribution, under the same licence.",
            "",
            "## Split",
            "",
            "GoEmotions: train fits the text head; dev fits its temperature and the decision "
            "rule's prior-correction exponent (argmax of log p - alpha log prior, alpha "
            f"{sv['alpha']:.2f} on the service set, {ek['alpha']:.2f} on Ekman's, for "
            "macro-F1); test is only scored. RAVDESS: "
            f"{sp['folds']} leave-actors-out folds (actors per fold: {sp['fold_actors']}); each "
            "fold trains on the other actors' clips, as recorded and through the telephone "
            "path, and scores its own actors' clips; the shipped speech head is then trained "
            "on every actor. Nothing in the features was trained on RAVDESS (Whisper's "
            "weights are its authors'; prosody is measured), so every fold is "
            "speaker-independent. Text + speech pairs are simulated (no corpus "
            "has both): dev comments x clips of actors 1-18 fit the fusion weights, test "
            "comments x clips of actors 19-22 score it.",
            "",
            "## Metrics",
            "",
            *_table(rows),
            "",
            "The profile vector is not used by the emotion head (see docs/understanding.md)."
            + (
                " Callers pass the message text to `Understanding.predict_many(..., texts=...)` "
                "for the lexical branch; without it the head reads the embedding alone, less "
                "accurately."
                if buckets
                else ""
            ),
            "",
            *_reproduce(report),
        ]
    )


# ---------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant train", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, default=None, help="data folder (ASSISTANT_DATA_DIR)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="auto", help="auto, cpu or cuda")
    common.add_argument("--threads", type=int, default=2, help="torch threads")
    common.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="where weights go")
    common.add_argument("--no-publish", action="store_true", help="skip weights, cards, docs")
    common.add_argument("--no-progress", action="store_true")
    common.add_argument(
        "--corrections",
        type=Path,
        default=None,
        help="CSV of operators' label corrections to train on as well (turn_id,field,label,text)",
    )
    intent = sub.add_parser("intent", parents=[common], help="intent head (Banking77 + oos)")
    intent.add_argument("--members", type=int, default=5, help="ensemble size = CV folds")
    intent.add_argument("--hidden", type=int, default=768)
    intent.add_argument("--epochs", type=int, default=40)
    intent.add_argument(
        "--input-noise",
        type=float,
        default=0.0,
        help="std of the Gaussian noise on training embeddings, per 1/sqrt(384)",
    )
    intent.add_argument(
        "--lexicon-buckets",
        type=int,
        default=4096,
        help="hashed gram buckets of the lexical branch (0: none); the emotion head's count "
        "lets the server hash a message once for both",
    )
    intent.add_argument("--lexicon-lr", type=float, default=5e-3)
    intent.add_argument("--film-epochs", type=int, default=15)
    intent.add_argument("--sessions", type=int, default=10_000, help="simulated sessions")
    intent.add_argument("--sim-seed", type=int, default=7077, help="FiLM training sessions")
    intent.add_argument("--bench-seed", type=int, default=4077, help="benchmark sessions")
    intent.add_argument(
        "--max-in-scope-drop",
        type=float,
        default=0.005,
        help="in-scope validation accuracy the oos threshold may cost",
    )
    intent.add_argument(
        "--score-shipped",
        action="store_true",
        help="train nothing: recompute the test figures of the weights in --out-dir through "
        "the serving path; the other entries stay those of docs/understanding_report.json",
    )
    emotion = sub.add_parser("emotion", parents=[common], help="text + speech emotion heads")
    emotion.add_argument("--text-members", type=int, default=3)
    emotion.add_argument("--text-hidden", type=int, default=256)
    emotion.add_argument("--text-epochs", type=int, default=8)
    emotion.add_argument(
        "--lexicon-buckets", type=int, default=4096, help="hashed gram buckets (0: none)"
    )
    emotion.add_argument("--lexicon-lr", type=float, default=5e-3)
    emotion.add_argument(
        "--grouped-loss", type=float, default=0.5, help="weight of the service/Ekman loss"
    )
    emotion.add_argument("--speech-members", type=int, default=3)
    emotion.add_argument("--speech-hidden", type=int, default=256)
    emotion.add_argument("--speech-epochs", type=int, default=60)
    emotion.add_argument("--speech-folds", type=int, default=11)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path | None = args.data or default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        print("no data folder: pass --data or set ASSISTANT_DATA_DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    started = time.perf_counter()
    command = "python -m fusion.training.heads " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    machine = (
        f"{platform.machine()} {os.cpu_count()} CPUs, device {device}, torch threads {args.threads}"
    )
    if getattr(args, "score_shipped", False):
        # The top-level command, dates, run time and machine stay the training run's: they
        # describe how the weights were made. This run's go under "scored".
        docs = DOCS_DIR / "understanding_report.json"
        previous = json.loads(docs.read_text()).get("intent") if docs.exists() else None
        if not previous:
            print(f"no intent entry in {docs}: nothing to re-score against", file=sys.stderr)
            return 2
        report = score_shipped_intent(args, data_dir, device, previous)
        report["scored"] = {
            "command": command,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "runtime_s": time.perf_counter() - started,
            "machine": machine,
            "torch": torch.__version__,
            **report["scored"],
        }
    else:
        trainer = train_intent if args.kind == "intent" else train_emotion
        report = trainer(args, data_dir, device)
        report = {
            "kind": args.kind,
            "command": command,
            "seed": args.seed,
            "machine": machine,
            "torch": torch.__version__,
            "trained": datetime.now(UTC).strftime("%Y-%m-%d"),
            "runtime_s": time.perf_counter() - started,
            **report,
        }
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    (RUNS_DIR / f"{args.kind}.json").write_text(json.dumps(report, indent=1))
    if not args.no_publish:
        weights = args.out_dir / f"{args.kind}.pt"
        card = intent_card if args.kind == "intent" else emotion_card
        weights.with_suffix(".md").write_text(card(report, weights))
        path = DOCS_DIR / "understanding_report.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged[args.kind] = report
        path.write_text(json.dumps(merged, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
