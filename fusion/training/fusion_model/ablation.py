"""The ablation: every variant (one modality, each fusion strategy, the shipped strategy on
each pair of modalities) trained on k-1 folds of the simulated sessions and tested on the
last, fold fits in parallel worker processes, each checkpointed under the run's folder so an
interrupted run resumes."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score  # type: ignore[import-untyped, unused-ignore]
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.model import MODALITIES, STRATEGIES, FusionModelConfig
from fusion.training.fusion_model.criteria import summary
from fusion.training.fusion_model.fit import (
    SessionTensors,
    TrainConfig,
    predict,
    score,
    session_tensors,
    train_model,
)
from fusion.training.simulator import Benchmark
from fusion.training.simulator_tables import EMOTIONS

__all__ = [
    "CVContext",
    "Variant",
    "ablation_variants",
    "condition_key",
    "pooled_emotion_f1",
    "run_cv",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


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
            per["summary"] = {k: summary([f[k] for f in per["per_fold"]]) for k in keys}
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
