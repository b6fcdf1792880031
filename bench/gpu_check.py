"""Fusion forward and backward on CUDA in bf16: profiles per second.

Runs the fusion model (gated strategy, all modalities) on random features and synthetic
behaviour histories at a few batch sizes: a training step (forward, the joint loss with its
adversarial and reconstruction terms, backward, optimizer step) under bf16 autocast, and an
inference forward. Prints profiles per second for each. Without a GPU it says so and exits 0.

    .venv/bin/python bench/gpu_check.py [--batches 256 1024 4096] [--steps 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from fusion.behaviour import EVENT_CATALOGUE, BehaviourTensors, collate, featurize_events
from fusion.device import autocast
from fusion.model import FusionModel, FusionModelConfig, joint_loss


@dataclass(frozen=True, slots=True)
class _Event:
    name: str
    occurred_at: datetime
    props: dict[str, Any]


def _inputs(
    batch: int, config: FusionModelConfig, device: torch.device, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, BehaviourTensors, torch.Tensor, torch.Tensor, torch.Tensor]:
    now = datetime.now(UTC)
    names = list(EVENT_CATALOGUE)
    histories = [
        featurize_events(
            [
                _Event(str(rng.choice(names)), now - timedelta(minutes=float(m)), {})
                for m in rng.uniform(0, 600, size=int(rng.integers(1, 16)))
            ],
            now,
        )
        for _ in range(batch)
    ]
    text = torch.randn(batch, config.text_dim, device=device)
    speech = torch.randn(batch, config.speech_dim, device=device)
    masks = torch.ones(batch, 3, dtype=torch.bool, device=device)
    intent = torch.randint(0, config.n_intents, (batch,), device=device)
    emotion = torch.randint(0, config.n_emotions, (batch,), device=device)
    behaviour = BehaviourTensors.from_batch(collate(histories), device)
    return text, speech, behaviour, masks, intent, emotion


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(batch: int, steps: int, device: torch.device) -> dict[str, float]:
    config = FusionModelConfig(strategy="gated")
    model = FusionModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    text, speech, behaviour, masks, intent, emotion = _inputs(
        batch, config, device, np.random.default_rng(0)
    )

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            out = model(text, speech, behaviour, masks)
            loss = joint_loss(model, out, text, behaviour, intent, emotion).total
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast(device):
            model(text, speech, behaviour, masks)

    figures: dict[str, float] = {"batch": batch}
    for name, step, mode in (("train", train_step, True), ("infer", infer_step, False)):
        model.train(mode)
        for _ in range(5):
            step()
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        figures[f"{name}_profiles_per_s"] = batch * steps / (time.perf_counter() - started)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU found (torch.cuda.is_available() is False): nothing to measure")
        return 0
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast")
    rows = [_measure(batch, args.steps, device) for batch in args.batches]
    print(f"{'batch':>6} {'train profiles/s':>18} {'infer profiles/s':>18}")
    for row in rows:
        print(
            f"{int(row['batch']):>6} {row['train_profiles_per_s']:>18,.0f} "
            f"{row['infer_profiles_per_s']:>18,.0f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"device": torch.cuda.get_device_name(device), "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
