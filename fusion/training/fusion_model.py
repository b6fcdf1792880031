"""Train and evaluate the fusion model on the simulated benchmark (every figure: simulated).

    python -m fusion.training.fusion_model --data ../shared/data --folds 5  # assistant train fusion

1. Features are computed once and cached under var/cache/: MiniLM embeddings of the Banking77
   train utterances and speech features of the RAVDESS clips.
2. `fusion.training.simulator` draws the sessions (fixed, documented config).
3. k-fold cross-validation over the simulator's folds (no utterance and no actor in two folds)
   trains every ablation variant on k-1 folds and tests it on the last: text only, speech
   only, behaviour only, each fusion strategy with all modalities (also tested with each one
   modality hidden), and the shipped strategy trained on each pair of modalities. Every fold's
   weights and metrics are checkpointed under var/runs/<run>/, so an interrupted run resumes.
4. A report (JSON + Markdown) with mean +- std over folds, overall and on the ambiguous subset.
5. The shipped strategy is trained on all sessions and saved to fusion/weights/fusion.pt with
   a model card (fusion/weights/fusion.md); the report is copied to docs/fusion_report.*.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score  # type: ignore[import-untyped, unused-ignore]
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.behaviour import BehaviourTensors, collate, featurize_events
from fusion.device import select_device
from fusion.inference import WEIGHTS_PATH, save_checkpoint
from fusion.model import MODALITIES, STRATEGIES, FusionModel, FusionModelConfig, joint_loss
from fusion.text_encoder import EMBEDDING_DIM, TextEncoder, TextEncoderConfig
from fusion.training.data_dir import default_data_dir
from fusion.training.simulator import (
    EMOTIONS,
    RAVDESS_TO_EMOTION,
    Benchmark,
    SimulatorConfig,
    measure_confusion_groups,
    simulate,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "var" / "cache"
RUNS_DIR = REPO_ROOT / "var" / "runs"
DOCS_DIR = REPO_ROOT / "docs"
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------- data and features


@dataclass(frozen=True, slots=True)
class Banking77:
    texts: tuple[str, ...]
    labels: IntArray  # [N] index into intents
    intents: tuple[str, ...]


def load_banking77(data_dir: Path, split: str = "train") -> Banking77:
    folder = data_dir / "banking77" / "banking_data"
    intents = tuple(json.loads((folder / "categories.json").read_text()))
    index = {name: i for i, name in enumerate(intents)}
    with (folder / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = tuple(r["text"] for r in rows)
    labels = np.array([index[r["category"]] for r in rows], dtype=np.int64)
    return Banking77(texts, labels, intents)


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def text_features(
    texts: Sequence[str], device: torch.device, cache_dir: Path = CACHE_DIR, batch: int = 64
) -> FloatArray:
    """MiniLM embeddings [N, 384], cached by the texts' digest (the encoder is fixed)."""
    path = cache_dir / f"minilm-{_digest(texts)}.npy"
    if path.exists():
        cached: FloatArray = np.load(path).astype(np.float32)
        if cached.shape == (len(texts), EMBEDDING_DIM):
            return cached
    encoder = TextEncoder(device, TextEncoderConfig())
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch), desc="text embeddings", unit="batch"):
        out[start : start + batch] = encoder.encode(list(texts[start : start + batch]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


@dataclass(frozen=True, slots=True)
class SpeechTable:
    features: FloatArray  # [clips, S]
    emotions: tuple[str, ...]  # RAVDESS label per clip
    actors: tuple[int, ...]
    genders: tuple[str, ...]
    source: dict[str, Any]  # what produced the features (recorded in the model card)


def speech_table(data_dir: Path, device: torch.device) -> SpeechTable:
    """Speech features of the RAVDESS clips from the shipped speech featuriser."""
    from fusion.speech import WEIGHTS_PATH as SPEECH_WEIGHTS
    from fusion.speech import SpeechFeaturizer, ravdess_features

    if not SPEECH_WEIGHTS.exists():
        raise SystemExit(
            f"{SPEECH_WEIGHTS} is missing: train it first "
            "(python -m fusion.training.speech_encoder)"
        )
    ravdess = data_dir / "ravdess_speech_16k_flac"
    featurizer = SpeechFeaturizer(device)
    x, emotions, actors, files = ravdess_features(ravdess, featurizer, cache_dir=CACHE_DIR)
    with (ravdess / "labels.csv").open(newline="") as f:
        gender_of = {row["file"]: row["gender"] for row in csv.DictReader(f)}
    source = {
        "featurizer": "fusion.speech.SpeechFeaturizer",
        "weights": SPEECH_WEIGHTS.name,
        "weights_sha256": featurizer.weights_sha256,
        "dim": int(x.shape[1]),
        # Actors whose clips the speech encoder never trained on: emotion figures on the other
        # actors' clips are optimistic (the encoder saw those clips with their labels).
        "unseen_actors": [int(a) for a in featurizer.metadata.get("val_actors", [])],
    }
    return SpeechTable(
        x.astype(np.float32),
        tuple(emotions),
        tuple(int(a) for a in actors),
        tuple(gender_of[f] for f in files),
        source,
    )


# ---------------------------------------------------------------------------- session tensors


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


# ---------------------------------------------------------------------------- training


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


# ---------------------------------------------------------------------------- the ablation


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    config: FusionModelConfig
    # Test conditions: None is every available modality; a name hides that one at test time.
    hide: tuple[str | None, ...] = (None,)


def ablation_variants(base: FusionModelConfig, ship: str) -> list[Variant]:
    single = [
        Variant(f"{m} only", replace(base, strategy=ship, modalities=(m,))) for m in MODALITIES
    ]
    fused = [
        Variant(f"fusion: {s}", replace(base, strategy=s), (None, *MODALITIES)) for s in STRATEGIES
    ]
    pairs = [
        Variant(f"{' + '.join(pair)} ({ship})", replace(base, strategy=ship, modalities=pair))
        for pair in (("text", "speech"), ("text", "behaviour"), ("speech", "behaviour"))
    ]
    return single + fused + pairs


def condition_key(hide: str | None) -> str:
    return "all" if hide is None else f"without {hide}"


def _slug(name: str) -> str:
    return (
        name.replace(" + ", "+")
        .replace(": ", "-")
        .replace(" ", "_")
        .replace("(", "")
        .replace(")", "")
    )


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


@dataclass(frozen=True, slots=True)
class CVContext:
    """What a worker process needs to rebuild the session tensors and fit one fold."""

    bench: Benchmark
    text_x: FloatArray
    speech_x: FloatArray
    train: TrainConfig
    run_dir: Path
    device: str
    threads: int
    progress: bool


_WORKER: tuple[CVContext, SessionTensors] | None = None


def _init_worker(ctx: CVContext, data: SessionTensors | None = None) -> None:
    global _WORKER
    torch.set_num_threads(ctx.threads)
    if data is None:
        data = session_tensors(ctx.bench, ctx.text_x, ctx.speech_x, torch.device(ctx.device))
    _WORKER = (ctx, data)


def _fit_fold(variant: Variant, fold: int) -> dict[str, dict[str, float]]:
    """Train one variant on the other folds, test on `fold`; checkpoint weights and predictions."""
    assert _WORKER is not None, "worker not initialised"
    ctx, data = _WORKER
    base = ctx.run_dir / "folds" / _slug(variant.name) / f"fold{fold}"
    metrics_path = base.with_suffix(".json")
    if metrics_path.exists():
        cached: dict[str, dict[str, float]] = json.loads(metrics_path.read_text())
        return cached
    train_rows, test_rows = ctx.bench.split(fold)
    model = train_model(
        variant.config,
        replace(ctx.train, seed=ctx.train.seed * 1000 + fold),
        data,
        train_rows,
        torch.device(ctx.device),
        ctx.progress,
        desc=f"{variant.name} f{fold + 1}",
    )
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, IntArray] = {"rows": test_rows}
    for hide in variant.hide:
        key = condition_key(hide)
        intent_pred, emotion_pred = predict(model, data, test_rows, hide)
        metrics[key] = score(data, test_rows, intent_pred, emotion_pred)
        predictions[f"{key}/intent"] = intent_pred
        predictions[f"{key}/emotion"] = emotion_pred
    base.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), base.with_suffix(".pt"))
    np.savez(base.with_suffix(".npz"), **predictions)  # type: ignore[arg-type]
    metrics_path.write_text(json.dumps(metrics, indent=1))
    return metrics


def run_cv(
    variants: Sequence[Variant],
    ctx: CVContext,
    data: SessionTensors,
    folds: int | Sequence[int],
    workers: int = 1,
) -> dict[str, Any]:
    """Per variant and test condition: per-fold metrics and their mean/std over folds.

    `folds` is the number of folds (all tested) or the list of folds to test.
    """
    fold_ids = list(range(folds)) if isinstance(folds, int) else list(folds)
    jobs = [(v, k) for v in variants for k in fold_ids]
    done: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    bar = tqdm(total=len(jobs), desc="cross-validation", unit="model", disable=not ctx.progress)
    if workers <= 1:
        _init_worker(ctx, data)
        for variant, fold in jobs:
            bar.set_postfix_str(f"{variant.name} / fold {fold + 1}")
            done[variant.name, fold] = _fit_fold(variant, fold)
            bar.update()
    else:
        quiet = replace(ctx, progress=False)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, spawn, _init_worker, (quiet,)) as pool:
            futures = {pool.submit(_fit_fold, v, k): (v.name, k) for v, k in jobs}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.set_postfix_str(f"{futures[future][0]} / fold {futures[future][1] + 1}")
                bar.update()
    bar.close()
    results: dict[str, Any] = {}
    for variant in variants:
        conditions: dict[str, Any] = {}
        for fold in fold_ids:
            for cond, m in done[variant.name, fold].items():
                conditions.setdefault(cond, {"per_fold": []})["per_fold"].append(m)
        for per in conditions.values():
            keys = per["per_fold"][0].keys()
            per["summary"] = {k: _summary([f[k] for f in per["per_fold"]]) for k in keys}
        results[variant.name] = {
            "strategy": variant.config.strategy,
            "modalities": list(variant.config.modalities),
            "conditions": conditions,
        }
    return results


def pooled_emotion_f1(
    variants: Sequence[Variant], run_dir: Path, data: SessionTensors, subset: npt.NDArray[np.bool_]
) -> dict[str, dict[str, float]]:
    """Emotion macro-F1 over all folds' test predictions pooled, on the sessions in `subset`."""
    true = data.emotion.cpu().numpy()
    out: dict[str, dict[str, float]] = {}
    for variant in variants:
        folder = run_dir / "folds" / _slug(variant.name)
        per: dict[str, tuple[list[IntArray], list[IntArray]]] = {}
        for path in sorted(folder.glob("fold*.npz")):
            with np.load(path) as stored:
                rows = stored["rows"]
                keep = subset[rows]
                for name in stored.files:
                    if name.endswith("/emotion"):
                        t, p = per.setdefault(name.removesuffix("/emotion"), ([], []))
                        t.append(true[rows][keep])
                        p.append(stored[name][keep])
        out[variant.name] = {
            cond: float(
                f1_score(
                    np.concatenate(t),
                    np.concatenate(p),
                    labels=list(range(len(EMOTIONS))),
                    average="macro",
                    zero_division=0,
                )
            )
            for cond, (t, p) in per.items()
            if sum(len(x) for x in t)
        }
    return out


# ---------------------------------------------------------------------------- criteria, report

METRICS = (
    ("intent_acc", "intent acc"),
    ("intent_acc_ambiguous", "intent acc (ambiguous)"),
    ("emotion_f1", "emotion macro-F1"),
    ("emotion_f1_ambiguous", "emotion macro-F1 (ambiguous)"),
)
PAIR_OF = {"text": "speech + behaviour", "speech": "text + behaviour", "behaviour": "text + speech"}


def _mean(results: dict[str, Any], variant: str, cond: str, metric: str) -> float:
    return float(results[variant]["conditions"][cond]["summary"][metric]["mean"])


def _per_fold(results: dict[str, Any], variant: str, cond: str, metric: str) -> list[float]:
    return [float(f[metric]) for f in results[variant]["conditions"][cond]["per_fold"]]


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """a - b in points, per fold (the folds share their test sessions) and mean +- std."""
    diffs = [100 * (x - y) for x, y in zip(a, b, strict=True)]
    return {"per_fold": diffs, **_summary(diffs)}


def criteria(results: dict[str, Any], ship: str) -> dict[str, Any]:
    """The two acceptance checks, with the figures they rest on (points = percentage points).

    "Within 1 point" reads one-sided: the fused model with a modality hidden may be better
    than the model trained without it, but not more than 1 point worse (on the fold means).
    """
    singles = [f"{m} only" for m in MODALITIES]
    fused = [f"fusion: {s}" for s in STRATEGIES]
    metric = "intent_acc_ambiguous"
    best_single = max(singles, key=lambda v: _mean(results, v, "all", metric))
    best_fused = max(fused, key=lambda v: _mean(results, v, "all", metric))
    margin = _paired(
        _per_fold(results, best_fused, "all", metric),
        _per_fold(results, best_single, "all", metric),
    )
    per_strategy = {
        v: _paired(
            _per_fold(results, v, "all", metric), _per_fold(results, best_single, "all", metric)
        )
        for v in fused
    }
    missing = []
    for hidden, pair in PAIR_OF.items():
        pair_name = f"{pair} ({ship})"
        for key, _ in METRICS[::2]:
            gap = _paired(
                _per_fold(results, pair_name, "all", key),
                _per_fold(results, f"fusion: {ship}", f"without {hidden}", key),
            )
            missing.append(
                {
                    "hidden": hidden,
                    "metric": key,
                    "fused_without": _mean(results, f"fusion: {ship}", f"without {hidden}", key),
                    "trained_on_rest": _mean(results, pair_name, "all", key),
                    "gap_points": gap,
                    "within_1_point": gap["mean"] <= 1.0,
                }
            )
    return {
        "ambiguous_margin": {
            "metric": metric,
            "best_fusion": best_fused,
            "best_single": best_single,
            "margin_points": margin,
            "at_least_5_points": margin["mean"] >= 5.0,
            "each_strategy_vs_best_single": per_strategy,
        },
        "missing_modality": missing,
        "missing_modality_all_within_1_point": all(m["within_1_point"] for m in missing),
    }


def _fmt(summary: dict[str, dict[str, float]], key: str) -> str:
    s = summary[key]
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def render_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    lines = [
        "# Fusion ablation (simulated benchmark)",
        "",
        "Every figure here comes from the **simulated** benchmark of `fusion.training.simulator` "
        "(Banking77 train utterances, RAVDESS clips, simulated behaviour logs); none is a "
        "measurement on real customers. Mean ± standard deviation over "
        f"{report['folds']} cross-validation folds, in percent.",
        "",
        f"Command: `{report['command']}`  ",
        f"Run: `{report['run']}`, {report['runtime_s'] / 60:.1f} min on {report['machine']}.",
        "",
        "## All modalities available at test time",
        "",
        "| model | " + " | ".join(label for _, label in METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for name, entry in res.items():
        summary = entry["conditions"]["all"]["summary"]
        lines.append(f"| {name} | " + " | ".join(_fmt(summary, k) for k, _ in METRICS) + " |")
    lines += [
        "",
        "## One modality hidden at test time",
        "",
        "Fusion models trained on all modalities, tested with one modality masked in every test "
        "session, next to the shipped strategy trained only on the remaining two.",
        "",
        "| model | test condition | " + " | ".join(label for _, label in METRICS) + " |",
        "| --- | --- |" + " --- |" * len(METRICS),
    ]
    for name, entry in res.items():
        for cond, per in entry["conditions"].items():
            if cond == "all":
                continue
            summary = per["summary"]
            lines.append(
                f"| {name} | {cond} | " + " | ".join(_fmt(summary, k) for k, _ in METRICS) + " |"
            )
    crit = report["criteria"]
    amb = crit["ambiguous_margin"]
    m = amb["margin_points"]
    lines += [
        "",
        "## Acceptance checks",
        "",
        "Differences are in percentage points, computed per fold (every model of a fold is "
        "tested on the same sessions) and given as mean ± std over folds.",
        "",
        f"- Best fusion ({amb['best_fusion']}) minus best single modality "
        f"({amb['best_single']}), intent accuracy on the ambiguous subset: "
        f"**{m['mean']:+.1f} ± {m['std']:.1f} points** (target ≥ +5: "
        f"{'met' if amb['at_least_5_points'] else 'NOT met'}). Per strategy: "
        + ", ".join(
            f"{name.removeprefix('fusion: ')} {d['mean']:+.1f} ± {d['std']:.1f}"
            for name, d in amb["each_strategy_vs_best_single"].items()
        )
        + ".",
        f"- Shipped strategy ({report['ship_strategy']}) with one modality hidden at test time "
        "vs the same strategy trained on the remaining two (gap = pair model minus fused "
        "model; target: gap ≤ 1 point):",
        "",
        "| hidden | metric | fused, hidden at test | trained on the rest | gap (points) | ≤ 1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in crit["missing_modality"]:
        gap = row["gap_points"]
        lines.append(
            f"| {row['hidden']} | {row['metric']} | {100 * row['fused_without']:.1f} | "
            f"{100 * row['trained_on_rest']:.1f} | {gap['mean']:+.1f} ± {gap['std']:.1f} | "
            f"{'yes' if row['within_1_point'] else 'NO'} |"
        )
    unseen = {
        name: entry["emotion_f1_unseen_speakers_pooled"]
        for name, entry in res.items()
        if "emotion_f1_unseen_speakers_pooled" in entry
    }
    if unseen:
        actors = ", ".join(str(a) for a in report["speech_features"].get("unseen_actors", []))
        lines += [
            "",
            "## Emotion on speakers the speech encoder never heard",
            "",
            "The speech encoder (`fusion/weights/speech_encoder.pt`) was trained on the emotion "
            "labels of RAVDESS actors other than "
            f"{actors}. Cross-validation here splits actors anew, so most test clips come from "
            "actors that encoder was trained on, and the emotion figures above are optimistic. "
            f"Emotion macro-F1 on the test sessions whose clip is by actors {actors} only, "
            "pooled over all folds (no std; a few hundred sessions):",
            "",
            "| model | " + " | ".join(sorted({c for v in unseen.values() for c in v})) + " |",
            "| --- |" + " --- |" * len({c for v in unseen.values() for c in v}),
        ]
        conds = sorted({c for v in unseen.values() for c in v})
        for name, values in unseen.items():
            cells = [f"{100 * values[c]:.1f}" if c in values else "" for c in conds]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bench = report["benchmark"]
    lines += [
        "",
        "## Benchmark",
        "",
        f"{bench['sessions']} simulated sessions, {bench['ambiguous']} ambiguous, "
        f"{bench['with_speech']} with speech, {bench['with_behaviour']} with behaviour events. "
        "Simulator config, fixed before any result was read (the ambiguous groups are listed "
        "in docs/fusion.md and in the JSON report):",
        "",
        "```json",
        json.dumps({k: v for k, v in bench["config"].items() if k != "groups"}),
        "```",
        "",
        f"Speech features: `{json.dumps(report['speech_features'])}`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- development check

# The development benchmark: the same simulator with another seed over the Banking77 *test*
# utterances (which the cross-validation never uses). Every model setting was chosen here;
# the cross-validation folds were never used to choose anything.
DEV_SIM_SEED = 1077
DEV_FOLDS = (0, 1)


def dev_variants(base: FusionModelConfig, ship: str) -> list[Variant]:
    """The models the two acceptance checks rest on, for the development check."""
    return [
        Variant("text only", replace(base, strategy=ship, modalities=("text",))),
        Variant("behaviour only", replace(base, strategy=ship, modalities=("behaviour",))),
        Variant(f"fusion: {ship}", replace(base, strategy=ship), (None, "text")),
        Variant(
            f"speech + behaviour ({ship})",
            replace(base, strategy=ship, modalities=("speech", "behaviour")),
        ),
    ] + [Variant(f"fusion: {s}", replace(base, strategy=s)) for s in STRATEGIES if s != ship]


def dev_check(
    data_dir: Path,
    base: FusionModelConfig,
    train: TrainConfig,
    ship: str,
    tag: str,
    workers: int = 2,
    threads: int = 1,
    folds: Sequence[int] = DEV_FOLDS,
    strategies: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on the development benchmark's other folds, test on `folds`; print both checks.

    Results are cached under var/runs/dev-<tag>/ (a rerun with the same tag resumes).
    """
    device = torch.device("cpu")
    b77 = load_banking77(data_dir, "test")
    text_x = text_features(b77.texts, device)
    speech = speech_table(data_dir, device)
    sim = replace(SimulatorConfig(), seed=DEV_SIM_SEED)
    bench = simulate(
        sim, b77.intents, b77.labels.tolist(), speech.emotions, speech.actors, speech.genders
    )
    data = session_tensors(bench, text_x, speech.features, device)
    base = replace(base, speech_dim=int(speech.features.shape[1]), n_intents=len(b77.intents))
    variants = [
        v
        for v in dev_variants(base, ship)
        if strategies is None or v.config.strategy in strategies or len(v.config.modalities) < 3
    ]
    run_dir = RUNS_DIR / f"dev-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps({"model": _jsonable(asdict(base)), "train": asdict(train)}, indent=1)
    )
    ctx = CVContext(bench, text_x, speech.features, train, run_dir, "cpu", threads, progress)
    started = time.perf_counter()
    results = run_cv(variants, ctx, data, folds, workers)
    elapsed = time.perf_counter() - started

    def acc(name: str, cond: str = "all", key: str = "intent_acc_ambiguous") -> list[float]:
        return _per_fold(results, name, cond, key)

    text_amb = acc("text only")
    fused = [v.name for v in variants if len(v.config.modalities) == 3]
    margins = {v: _paired(acc(v), text_amb) for v in fused}
    gap = _paired(
        acc(f"speech + behaviour ({ship})", key="intent_acc"),
        acc(f"fusion: {ship}", "without text", "intent_acc"),
    )
    lines = [f"dev check {tag}: {elapsed / 60:.1f} min, folds {list(folds)}"]
    for name, entry in results.items():
        for cond, per in entry["conditions"].items():
            summ = per["summary"]
            lines.append(
                f"  {name:32s} {cond:14s} intent {_fmt(summ, 'intent_acc')}  "
                f"ambiguous {_fmt(summ, 'intent_acc_ambiguous')}  "
                f"emotion {_fmt(summ, 'emotion_f1')}"
            )
    for name, d in margins.items():
        lines.append(f"  margin {name} - text only (ambiguous): {d['mean']:+.2f} ± {d['std']:.2f}")
    lines.append(f"  gap text hidden (pair - fused): {gap['mean']:+.2f} ± {gap['std']:.2f}")
    print("\n".join(lines))
    summary = {"results": results, "margins": margins, "text_hidden_gap": gap, "runtime_s": elapsed}
    (run_dir / "dev.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------- the command


def _config_dict(config: SimulatorConfig) -> dict[str, Any]:
    out = asdict(config)
    out["start"] = config.start.isoformat()
    return out


def measure_groups(data_dir: Path, device: torch.device) -> list[Any]:
    """Re-measure the confusion groups the simulator freezes (see fusion.training.simulator)."""
    from sklearn.linear_model import (  # type: ignore[import-untyped, unused-ignore]
        LogisticRegression,
    )
    from sklearn.model_selection import (  # type: ignore[import-untyped, unused-ignore]
        cross_val_predict,
    )

    b77 = load_banking77(data_dir, "train")
    x = text_features(b77.texts, device)
    clf = LogisticRegression(C=10.0, max_iter=2000)
    pred = cross_val_predict(clf, x, b77.labels, cv=5, n_jobs=1)
    return measure_confusion_groups(b77.labels.tolist(), pred.tolist(), b77.intents)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant train fusion", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (ASSISTANT_DATA_DIR)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="training seed (the simulator has its own)")
    p.add_argument("--sim-seed", type=int, default=SimulatorConfig().seed)
    p.add_argument("--sessions", type=int, default=SimulatorConfig().n_sessions)
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--strategy", choices=STRATEGIES, default="gated", help="strategy to ship")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--run", default=None, help="run name under var/runs (default: timestamp)")
    p.add_argument("--no-publish", action="store_true", help="skip docs/ and fusion/weights/")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel fold fits"
    )
    # One thread per worker: small models gain nothing from intra-op threads, and several
    # threads per process on a busy 2-core machine were measured 4x slower, not faster.
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--measure-groups", action="store_true", help="print confusion groups, exit")
    p.add_argument(
        "--dev",
        action="store_true",
        help="run the development check (Banking77 test utterances, own seed) and exit",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path | None = args.data or default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        print("no data folder: pass --data or set ASSISTANT_DATA_DIR", file=sys.stderr)
        return 2
    device = select_device(args.device)
    progress = not args.no_progress
    if args.measure_groups:
        for group, strength in measure_groups(data_dir, device):
            print(f"{strength:.3f}  {', '.join(group)}")
        return 0
    torch.set_num_threads(args.threads)
    if args.dev:
        dev_check(
            data_dir,
            default_model_config(),
            TrainConfig(epochs=args.epochs, seed=args.seed),
            args.strategy,
            args.run or "default",
            args.workers,
            args.threads,
            progress=progress,
        )
        return 0
    started = time.perf_counter()
    run = args.run or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = RUNS_DIR / run
    run_dir.mkdir(parents=True, exist_ok=True)

    b77 = load_banking77(data_dir, "train")
    text_x = text_features(b77.texts, device)
    speech = speech_table(data_dir, device)
    sim_config = replace(
        SimulatorConfig(), seed=args.sim_seed, n_sessions=args.sessions, n_folds=args.folds
    )
    bench = simulate(
        sim_config,
        b77.intents,
        b77.labels.tolist(),
        speech.emotions,
        speech.actors,
        speech.genders,
    )
    data = session_tensors(bench, text_x, speech.features, device)
    base = replace(
        default_model_config(),
        speech_dim=int(speech.features.shape[1]),
        n_intents=len(b77.intents),
        n_emotions=len(EMOTIONS),
    )
    train = TrainConfig(epochs=args.epochs, seed=args.seed)
    variants = ablation_variants(base, args.strategy)
    ctx = CVContext(
        bench, text_x, speech.features, train, run_dir, str(device), args.threads, progress
    )
    results = run_cv(variants, ctx, data, args.folds, args.workers)
    unseen = speech.source.get("unseen_actors")
    if unseen:
        clip_actor = np.array(speech.actors)
        subset = np.array(
            [s.speech_index >= 0 and clip_actor[s.speech_index] in unseen for s in bench.sessions]
        )
        pooled = pooled_emotion_f1(variants, run_dir, data, subset)
        for name, conds in pooled.items():
            results[name]["emotion_f1_unseen_speakers_pooled"] = conds
    command = "python -m fusion.training.fusion_model " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    report: dict[str, Any] = {
        "simulated": True,
        "run": run,
        "command": command,
        "folds": args.folds,
        "seed": args.seed,
        "ship_strategy": args.strategy,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, device {device}",
        "torch": torch.__version__,
        "benchmark": {
            "config": _config_dict(sim_config),
            "sessions": len(bench.sessions),
            "ambiguous": int(data.ambiguous.sum()),
            "with_speech": int(data.masks[:, 1].sum()),
            "with_behaviour": int(data.masks[:, 2].sum()),
        },
        "speech_features": speech.source,
        "model_config": _jsonable(asdict(base)),
        "train_config": asdict(train),
        "results": results,
        "criteria": criteria(results, args.strategy),
    }

    all_rows = np.arange(len(bench.sessions))
    final = train_model(
        replace(base, strategy=args.strategy), train, data, all_rows, device, progress, "final"
    )
    torch.save(final.state_dict(), run_dir / "final.pt")
    report["runtime_s"] = time.perf_counter() - started
    markdown = render_markdown(report)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    (run_dir / "report.md").write_text(markdown)
    if not args.no_publish:
        save_checkpoint(
            WEIGHTS_PATH,
            final,
            intents=b77.intents,
            emotions=EMOTIONS,
            metadata={
                "simulated": True,
                "run": run,
                "command": command,
                "speech_features": speech.source,
                "simulator": _config_dict(sim_config),
            },
        )
        WEIGHTS_PATH.with_suffix(".md").write_text(model_card(report))
        DOCS_DIR.mkdir(exist_ok=True)
        (DOCS_DIR / "fusion_report.json").write_text(json.dumps(report, indent=1))
        (DOCS_DIR / "fusion_report.md").write_text(markdown)
    print(markdown)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def model_card(report: dict[str, Any]) -> str:
    ship = report["ship_strategy"]
    summary = report["results"][f"fusion: {ship}"]["conditions"]["all"]["summary"]
    size_kb = WEIGHTS_PATH.stat().st_size / 1024 if WEIGHTS_PATH.exists() else 0.0
    mapping = ", ".join(f"{k} → {v}" for k, v in RAVDESS_TO_EMOTION.items())
    return "\n".join(
        [
            "# Model card: fusion.pt",
            "",
            f"Multimodal fusion model, strategy **{ship}**, {size_kb:.0f} KB, float32 state dict "
            "with its config; loaded offline by `fusion.inference.FusionInference`.",
            "",
            "## Inputs and outputs",
            "",
            "- text: 384-d all-MiniLM-L6-v2 sentence embedding (`fusion.text_encoder`);",
            f"- speech: {report['speech_features'].get('dim')}-d features from "
            f"`{report['speech_features'].get('featurizer')}` (weights sha256 "
            f"`{str(report['speech_features'].get('weights_sha256'))[:16]}…`); a different "
            "speech featuriser needs retraining;",
            "- behaviour: events featurised by `fusion.behaviour` (catalogue in docs/fusion.md);",
            "- any modality may be absent (masked);",
            f"- out: a {report['model_config']['shared_dim']}-d fused vector, per-modality "
            "contributions, 77 Banking77 intent logits and emotion logits "
            f"({', '.join(EMOTIONS)}).",
            "",
            "## Data and licences",
            "",
            "- Banking77 train utterances (PolyAI), CC BY 4.0.",
            "- RAVDESS speech, actors 01-22 (Livingstone & Russo 2018), **CC BY-NC-SA 4.0: "
            "non-commercial**; this model inherits that restriction. Emotion mapping: "
            f"{mapping} (surprised unused).",
            "- Behaviour logs: **simulated** by `fusion.training.simulator` (no public data pairs "
            "behaviour with service intents). The intent and emotion heads learned the "
            "simulator's patterns; on real traffic the fused vector is the product, the heads "
            "are not calibrated.",
            "",
            "## Training",
            "",
            f"All {report['benchmark']['sessions']} simulated sessions (every fold), "
            f"{report['train_config']['epochs']} epochs, seed {report['train_config']['seed']}, "
            "joint loss task + l1·adversarial + l2·discriminator + l3·reconstruction with "
            "modality dropout, a random-subset view and a late-fusion path (a linear intent and "
            "emotion expert per modality, trained also on its own, whose logits add to the "
            "fused heads'); config in the checkpoint. Settings chosen on a development "
            "benchmark simulated from the Banking77 test utterances (`--dev`), never on the "
            "cross-validation folds.",
            "",
            f"## Metrics (simulated, {report['folds']}-fold CV, mean ± std, %)",
            "",
            *[f"- {label}: {_fmt(summary, key)}" for key, label in METRICS],
            "",
            "Full ablation: docs/fusion_report.md.",
            "",
            "## Reproduce",
            "",
            "```sh",
            f".venv/bin/{report['command']}",
            "```",
            "",
        ]
    )


def train_fusion(argv: Sequence[str] | None = None) -> int:
    """Entry point for `assistant train fusion ...`."""
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
