"""The development check: the models the acceptance checks rest on, trained and tested on
a benchmark of its own (another seed, over the Banking77 *test* utterances, which the
cross-validation never uses). Every model setting was chosen here; the cross-validation folds
were never used to choose anything."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from fusion.model import STRATEGIES, FusionModelConfig
from fusion.training.data import RUNS_DIR, load_banking77
from fusion.training.features import text_features
from fusion.training.fusion_model.ablation import CVContext, Variant, run_cv
from fusion.training.fusion_model.criteria import paired, per_fold
from fusion.training.fusion_model.fit import TrainConfig, session_tensors
from fusion.training.fusion_model.report import fmt
from fusion.training.ravdess import speech_table
from fusion.training.simulator import SimulatorConfig, simulate

__all__ = ["DEV_FOLDS", "DEV_SIM_SEED", "dev_check", "dev_variants"]

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
        json.dumps({"model": asdict(base), "train": asdict(train)}, indent=1)
    )
    ctx = CVContext(bench, text_x, speech.features, train, run_dir, "cpu", threads, progress)
    started = time.perf_counter()
    results = run_cv(variants, ctx, data, folds, workers)
    elapsed = time.perf_counter() - started

    def acc(name: str, cond: str = "all", key: str = "intent_acc_ambiguous") -> list[float]:
        return per_fold(results, name, cond, key)

    text_amb = acc("text only")
    fused = [v.name for v in variants if len(v.config.modalities) == 3]
    margins = {v: paired(acc(v), text_amb) for v in fused}
    gap = paired(
        acc(f"speech + behaviour ({ship})", key="intent_acc"),
        acc(f"fusion: {ship}", "without text", "intent_acc"),
    )
    lines = [f"dev check {tag}: {elapsed / 60:.1f} min, folds {list(folds)}"]
    for name, entry in results.items():
        for cond, per in entry["conditions"].items():
            summ = per["summary"]
            lines.append(
                f"  {name:32s} {cond:14s} intent {fmt(summ, 'intent_acc')}  "
                f"ambiguous {fmt(summ, 'intent_acc_ambiguous')}  "
                f"emotion {fmt(summ, 'emotion_f1')}"
            )
    for name, d in margins.items():
        lines.append(f"  margin {name} - text only (ambiguous): {d['mean']:+.2f} ± {d['std']:.2f}")
    lines.append(f"  gap text hidden (pair - fused): {gap['mean']:+.2f} ± {gap['std']:.2f}")
    print("\n".join(lines))
    summary = {"results": results, "margins": margins, "text_hidden_gap": gap, "runtime_s": elapsed}
    (run_dir / "dev.json").write_text(json.dumps(summary, indent=1))
    return summary
