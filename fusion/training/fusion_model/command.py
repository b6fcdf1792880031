"""Train and evaluate the fusion model on the simulated benchmark (every figure: simulated).

The command line of `assistant train fusion ...` (`python -m fusion.training.fusion_model`):
the ablation, the shipped weights, their card and the report; `--dev` and `--measure-groups`
instead run the development check or print the confusion groups.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.device import select_device
from fusion.inference import WEIGHTS_PATH, save_checkpoint
from fusion.model import STRATEGIES
from fusion.training.data import DOCS_DIR, RUNS_DIR, data_folder, load_banking77
from fusion.training.features import text_features
from fusion.training.fusion_model.ablation import (
    CVContext,
    ablation_variants,
    pooled_emotion_f1,
    run_cv,
)
from fusion.training.fusion_model.criteria import criteria
from fusion.training.fusion_model.dev_check import dev_check
from fusion.training.fusion_model.fit import (
    TrainConfig,
    default_model_config,
    session_tensors,
    train_model,
)
from fusion.training.fusion_model.report import model_card, render_markdown
from fusion.training.ravdess import speech_table
from fusion.training.simulator import SimulatorConfig, measure_confusion_groups, simulate
from fusion.training.simulator_tables import EMOTIONS

__all__ = ["main"]


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
    data_dir = data_folder(args.data)
    if data_dir is None:
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
        "model_config": asdict(base),
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
