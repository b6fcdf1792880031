"""Train and evaluate the intent and emotion heads (`assistant train intent|emotion ...`).

Each run writes its report under var/runs/understanding/ and, unless `--no-publish`, the
weights, their model card and its entry of docs/understanding_report.json.

    python -m fusion.training.heads intent --data ../shared/data
    python -m fusion.training.heads emotion --data ../shared/data
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
from datetime import UTC, datetime
from pathlib import Path

import torch

from fusion.device import select_device
from fusion.heads.checkpoint import WEIGHTS_DIR
from fusion.training.data import DOCS_DIR, data_folder
from fusion.training.heads.cards import emotion_card, intent_card
from fusion.training.heads.emotion import train_emotion
from fusion.training.heads.intent import score_shipped_intent, train_intent
from fusion.training.heads.members import RUN_DIR

__all__ = ["main"]


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
    data_dir = data_folder(args.data)
    if data_dir is None:
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
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"{args.kind}.json").write_text(json.dumps(report, indent=1))
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
