"""Train the speech encoder on RAVDESS emotions, speaker-independently, and ship its weights.

    .venv/bin/python -m fusion.training.speech_encoder \
        --data /path/to/ravdess_speech_16k_flac --epochs N

The encoder learns through an 8-way emotion head that is discarded afterwards: fusion consumes
the embedding (plus prosody), not the head. Actors listed in --val-actors never reach the
optimiser; their accuracy is printed after every epoch. The weights of the last epoch ship
(no checkpoint is picked by validation score, so the reported figure is not selected on).

The learning rate follows a one-cycle shape (warm-up, then cosine decay) over training
progress, taken as the larger of the fraction of planned steps done and the fraction of the
wall-clock budget (--max-minutes) spent: on a quiet machine the step count governs and runs
are reproducible; on a slow or busy one the schedule compresses and still ends annealed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torchaudio
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.audio import TARGET_RATE, load_flac
from fusion.device import select_device
from fusion.heads.labels import RAVDESS
from fusion.prosody import PROSODY_NAMES, prosody_features
from fusion.speech import (
    SPEECH_DIM,
    WEIGHTS_PATH,
    FeatureStats,
    SpeechConfig,
    SpeechEncoder,
    embed_waves,
    pad_batch,
    prepare_wave,
    save_weights,
)
from fusion.training.data import default_data_dir
from fusion.training.ravdess import RAVDESS_DIR, read_ravdess_index

FloatArray = npt.NDArray[np.float32]

DEFAULT_VAL_ACTORS = (19, 20, 21, 22)  # two male (odd), two female (even) speakers
# Seconds kept back from --max-minutes for the final embedding pass, probe and save.
FINALISE_RESERVE_S = 90.0


@dataclass(frozen=True, slots=True)
class Augment:
    crop_seconds: float = 3.0
    speed_prob: float = 0.5
    gain_db: float = 6.0
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (10.0, 35.0)
    mulaw_prob: float = 0.25
    freq_masks: int = 2
    freq_mask_width: int = 5
    time_masks: int = 2
    time_mask_width: int = 15


def learning_rate(peak: float, progress: float, warmup: float = 0.15) -> float:
    """One-cycle shape over progress in [0, 1]: linear warm-up from peak/25, cosine to peak/1000."""
    if progress < warmup:
        return peak / 25 + (peak - peak / 25) * progress / warmup
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak / 1000 + (peak - peak / 1000) * 0.5 * (1.0 + math.cos(math.pi * t))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    data_root = default_data_dir()
    default_data = data_root / RAVDESS_DIR if data_root else None
    p = argparse.ArgumentParser(
        prog="python -m fusion.training.speech_encoder", description=__doc__
    )
    p.add_argument("--data", type=Path, default=default_data, help="ravdess_speech_16k_flac dir")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--crop-seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-actors", default=",".join(str(a) for a in DEFAULT_VAL_ACTORS), help="e.g. 19,20"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-minutes", type=float, default=19.0, help="wall-clock budget, all in")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--no-card", action="store_true", help="do not write the model card")
    args = p.parse_args(argv)
    if args.data is None:
        p.error("--data is required: no ASSISTANT_DATA_DIR and no ../shared/data")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment_wave(wave: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """One training view of a prepared 16 kHz clip [N] -> [M], M <= crop."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=gen))

    if uniform(0, 1) < aug.speed_prob:
        # Resampling and then reading at 16 kHz changes tempo and pitch together (speed
        # perturbation); 10% keeps the 10:9 and 10:11 rate ratios cheap to filter.
        new_rate = 14400 if uniform(0, 1) < 0.5 else 17600
        wave = torchaudio.functional.resample(wave, TARGET_RATE, new_rate)
    crop = int(aug.crop_seconds * TARGET_RATE)
    if wave.shape[0] > crop:
        start = int(torch.randint(0, wave.shape[0] - crop + 1, (), generator=gen))
        wave = wave[start : start + crop]
    wave = wave * 10 ** (uniform(-aug.gain_db, aug.gain_db) / 20)
    if uniform(0, 1) < aug.noise_prob:
        power = wave.pow(2).mean().clamp(min=1e-10)
        snr = uniform(*aug.snr_db)
        noise = torch.randn(wave.shape, generator=gen) * torch.sqrt(power / 10 ** (snr / 10))
        wave = wave + noise
    if uniform(0, 1) < aug.mulaw_prob:
        # 8-bit companding as on a telephone line.
        codes = torchaudio.functional.mu_law_encoding(wave.clamp(-1, 1), 256)
        wave = torchaudio.functional.mu_law_decoding(codes, 256)
    return wave


def spec_augment(feats: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and frame spans of [B, T, F] features (they are mean-normalised)."""
    out = feats.clone()
    batch, frames, bins = out.shape
    for b in range(batch):
        for _ in range(aug.freq_masks):
            width = int(torch.randint(0, aug.freq_mask_width + 1, (), generator=gen))
            start = int(torch.randint(0, max(1, bins - width), (), generator=gen))
            out[b, :, start : start + width] = 0
        for _ in range(aug.time_masks):
            width = int(torch.randint(0, aug.time_mask_width + 1, (), generator=gen))
            start = int(torch.randint(0, max(1, frames - width), (), generator=gen))
            out[b, start : start + width, :] = 0
    return out


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffled batches of clips of similar length, so little compute goes into padding."""
    order = np.argsort(np.asarray(lengths) + rng.uniform(0, TARGET_RATE * 0.3, len(lengths)))
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def evaluate(
    encoder: SpeechEncoder,
    head: nn.Module,
    waves: Sequence[FloatArray],
    labels: npt.NDArray[np.int64],
    device: torch.device,
) -> float:
    encoder.eval()
    head.eval()
    emb = embed_waves(encoder, waves, device)
    with torch.inference_mode():
        logits = head(torch.from_numpy(emb).to(device))
    predictions = logits.argmax(dim=1).cpu().numpy()
    return float((predictions == labels).mean())


def probe_accuracy(
    x_train: FloatArray,
    y_train: npt.NDArray[np.int64],
    x_val: FloatArray,
    y_val: npt.NDArray[np.int64],
) -> tuple[float, float, list[float]]:
    """Accuracy, macro-F1 and per-emotion recall of a logistic regression on SPEECH_DIM features.

    This is what a downstream head sees, so it is the figure the model card leads with.
    """
    from sklearn.linear_model import (  # type: ignore[import-untyped, unused-ignore]
        LogisticRegression,
    )
    from sklearn.metrics import (  # type: ignore[import-untyped, unused-ignore]
        f1_score,
        recall_score,
    )

    clf = LogisticRegression(C=0.1, max_iter=2000)
    clf.fit(x_train, y_train)
    pred = clf.predict(x_val)
    labels = list(range(len(RAVDESS)))
    recall = recall_score(y_val, pred, labels=labels, average=None, zero_division=0)
    return (
        float((pred == y_val).mean()),
        float(f1_score(y_val, pred, labels=labels, average="macro", zero_division=0)),
        [float(r) for r in recall],
    )


def machine_description(device: torch.device, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (
        f"{where}; {os.cpu_count()} logical CPUs ({cpu}), torch threads {threads}; "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}"
    )


def write_model_card(path: Path, facts: dict[str, str]) -> None:
    f = facts
    pa = f"**{f['probe_acc']}**"
    text = f"""# Speech encoder (ECAPA-TDNN, RAVDESS emotions)

`fusion/weights/speech_encoder.pt`: SpeechBrain `Fbank` (40 log mel bands, 20-3800 Hz, 25 ms
windows, 10 ms hop, per-utterance mean removed) followed by a small SpeechBrain `ECAPA_TDNN`
(channels {f["channels"]}, Res2Net scale 4, 128-d embedding; {f["params"]} parameters, stored in
half precision, {f["size"]}). Randomly initialised and trained here; no pretrained weights.

`fusion.speech.SpeechFeaturizer` turns an utterance into a {SPEECH_DIM}-d vector: the 128-d
embedding and {len(PROSODY_NAMES)} prosody features ({", ".join(PROSODY_NAMES)}), each
standardized with the training actors' mean and standard deviation (stored in the file).

## Intended use

Input features for the assistant's emotion and fusion heads: how something is said by a caller
(telephone 8 kHz or 16 kHz audio; the filterbank stops at 3.8 kHz so both look alike). Not a
speaker-verification model, not a stand-alone emotion classifier, and not validated on
spontaneous or non-English speech: RAVDESS is acted, read speech of two fixed sentences.

## Data and license

RAVDESS speech, audio-only (Livingstone & Russo 2018), actors 01-22 as staged in
`ravdess_speech_16k_flac/` (1,320 clips, 16 kHz mono): 8 emotions ({", ".join(RAVDESS)}).
License **CC BY-NC-SA 4.0 (non-commercial)**. These weights are derived from RAVDESS and inherit
that restriction: non-commercial use only, with attribution, under the same license.

## Split

By actor (speaker-independent), never by clip. Training actors: {f["train_actors"]}
({f["n_train"]} clips). Validation actors: {f["val_actors"]} ({f["n_val"]} clips), never seen by
the optimiser. Validation accuracy is printed after every epoch for monitoring only: the
shipped weights are those of the last epoch, not the best-scoring one. The same actors guided
the choice of the recipe's settings during development, so the figures below are somewhat
optimistic for new speakers; there is no separate test set (RAVDESS has only 24 actors, 22 here).

## Training

Emotion classification through a dropout + linear 8-way head (discarded afterwards),
cross-entropy with label smoothing 0.1, AdamW (weight decay {f["weight_decay"]}), one-cycle
learning rate peaking at {f["lr"]}, batch {f["batch_size"]}, {f["steps"]} steps
({f["epochs_run"]} of {f["epochs"]} planned epochs), seed {f["seed"]}. Progress through the
learning-rate schedule is the larger of the step fraction and the fraction of the wall-clock
budget spent. Edge silence is trimmed (35 dB below the loudest frame) in training and at
inference alike. Augmentation, drawn afresh for every batch:
random crop to at most {f["crop"]} s, speed perturbation 0.9x/1.1x (p 0.5), gain +-6 dB,
white noise at 10-35 dB SNR (p 0.5), 8-bit mu-law companding (p 0.25), two frequency masks
(<= 5 bands) and two time masks (<= 15 frames).

## Metrics (validation actors {f["val_actors"]}; chance 12.5%)

| measure | value |
| --- | --- |
| logistic regression on the {SPEECH_DIM}-d features, fit on training actors: accuracy | {pa} |
| same, macro-F1 | {f["probe_f1"]} |
| training head on the embedding alone, last epoch: accuracy | {f["head_acc"]} |
| training head, best epoch (for reference, not selected) | {f["best_head"]} |

Per-emotion recall of the logistic regression: {f["recall"]}.

Accuracy per epoch (training head): {f["history"]}.

## Reproduce

```
{f["command"]}
```

Training took {f["train_time"]} ({f["total_time"]} all in, including loading and the final
evaluation) on: {f["machine"]}. Epochs took {f["epoch_times"]} of wall time (the
spread is other work sharing the machine). Trained {f["date"]}. Results vary slightly between
machines and thread counts (floating-point order), and the wall-clock budget (`--max-minutes`,
default 19) ends training early (annealed) on a slower or busier machine; the run above
{f["budget_note"]}.
"""
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = select_device(args.device)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    val_actors = {int(a) for a in str(args.val_actors).split(",") if a.strip()}
    aug = Augment(crop_seconds=args.crop_seconds)
    config = SpeechConfig()

    clips = read_ravdess_index(args.data)
    waves: list[FloatArray] = []
    for clip in tqdm(clips, desc="loading RAVDESS", unit="clip"):
        wave, rate = load_flac(args.data / clip.file)
        waves.append(prepare_wave(wave, rate, config.min_seconds))
    labels = np.asarray([RAVDESS.index(c.emotion) for c in clips], dtype=np.int64)
    is_val = np.asarray([c.actor in val_actors for c in clips])
    train_idx = np.flatnonzero(~is_val)
    val_idx = np.flatnonzero(is_val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise SystemExit(f"empty split: {len(train_idx)} training, {len(val_idx)} validation clips")
    train_waves = [waves[i] for i in train_idx]
    val_waves = [waves[i] for i in val_idx]
    print(
        f"{len(train_idx)} training clips, {len(val_idx)} validation clips (actors "
        f"{sorted(val_actors)}), device {device}",
        flush=True,
    )

    encoder = SpeechEncoder(config).to(device)
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(config.lin_neurons, len(RAVDESS))).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    total_steps = args.epochs * -(-len(train_idx) // args.batch_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    train_tensors = [torch.from_numpy(w) for w in train_waves]
    train_labels = torch.from_numpy(labels[train_idx])

    history: list[float] = []
    epoch_times: list[float] = []
    train_started = time.monotonic()
    train_budget_s = args.max_minutes * 60 - (train_started - started) - FINALISE_RESERVE_S
    step = 0
    stopped_early = False
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.monotonic()
        encoder.train()
        head.train()
        total_loss = 0.0
        correct = 0
        seen = 0
        lengths = [w.shape[0] for w in train_waves]
        # Crops are short, so batch by the post-crop length to bound padding.
        crop = int(aug.crop_seconds * TARGET_RATE)
        batches = length_batches([min(n, crop) for n in lengths], args.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False)
        for batch in bar:
            progress = max(step / total_steps, (time.monotonic() - train_started) / train_budget_s)
            if progress >= 1.0:
                stopped_early = True
                break
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(args.lr, progress)
            views = [augment_wave(train_tensors[i], aug, gen).numpy() for i in batch]
            padded, rel = pad_batch(views)  # [B, N], [B]
            padded, rel = padded.to(device), rel.to(device)
            target = train_labels[batch].to(device)
            feats = spec_augment(encoder.features(padded, rel), aug, gen)  # [B, T, n_mels]
            logits = head(encoder.embed(feats, rel))  # [B, 8]
            loss = loss_fn(logits, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimiser.step()
            step += 1
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == target).sum())
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        val_acc = evaluate(encoder, head, val_waves, labels[val_idx], device)
        history.append(val_acc)
        epoch_seconds = time.monotonic() - epoch_start
        epoch_times.append(epoch_seconds)
        seen = max(seen, 1)
        print(
            f"epoch {epoch:2d}: train loss {total_loss / seen:.3f} acc {correct / seen:.3f} | "
            f"speaker-independent val acc {val_acc:.3f} | {epoch_seconds:.0f} s",
            flush=True,
        )
        if stopped_early:
            print(f"stopped after {step}/{total_steps} steps: {args.max_minutes} min budget")
            break
    train_time = time.monotonic() - train_started

    encoder.eval()
    print("embedding all clips for feature statistics and the probe", flush=True)
    emb = embed_waves(encoder, waves, device)  # [N, EMB]
    prosody = np.stack([prosody_features(w) for w in waves])  # [N, PROSODY_DIM]
    stats = FeatureStats.fit(emb[train_idx], prosody[train_idx])
    features = stats.combine(emb, prosody)
    probe_acc, probe_f1, recall = probe_accuracy(
        features[train_idx], labels[train_idx], features[val_idx], labels[val_idx]
    )
    print(
        f"logistic regression on {SPEECH_DIM}-d features: val acc {probe_acc:.3f}, "
        f"macro-F1 {probe_f1:.3f}",
        flush=True,
    )

    metadata = {
        "val_actors": sorted(val_actors),
        "val_accuracy_head": history[-1],
        "val_accuracy_probe": probe_acc,
        "epochs_run": len(history),
        "seed": args.seed,
        "data": "RAVDESS speech (CC BY-NC-SA 4.0, non-commercial)",
    }
    save_weights(args.out, encoder, stats, metadata)
    total_time = time.monotonic() - started
    size = args.out.stat().st_size
    print(
        f"saved {args.out} ({size / 1e6:.2f} MB); training {train_time / 60:.1f} min, "
        f"total {total_time / 60:.1f} min",
        flush=True,
    )

    if not args.no_card:
        shown = [a if not isinstance(a, Path) else str(a) for a in (argv or sys.argv[1:])]
        command = ".venv/bin/python -m fusion.training.speech_encoder " + shlex.join(shown)
        train_actors = sorted({c.actor for c in clips} - val_actors)
        write_model_card(
            args.out.with_suffix(".md"),
            {
                "channels": str(list(config.channels)),
                "params": f"{sum(p.numel() for p in encoder.parameters()):,}",
                "size": f"{size / 1e6:.1f} MB",
                "train_actors": ", ".join(f"{a:02d}" for a in train_actors),
                "val_actors": ", ".join(f"{a:02d}" for a in sorted(val_actors)),
                "n_train": str(len(train_idx)),
                "n_val": str(len(val_idx)),
                "weight_decay": f"{args.weight_decay:g}",
                "lr": f"{args.lr:g}",
                "batch_size": str(args.batch_size),
                "epochs_run": str(len(history)),
                "steps": f"{step} of {total_steps}",
                "epochs": str(args.epochs),
                "seed": str(args.seed),
                "crop": f"{aug.crop_seconds:g}",
                "probe_acc": f"{probe_acc:.1%}",
                "probe_f1": f"{probe_f1:.3f}",
                "head_acc": f"{history[-1]:.1%}",
                "best_head": f"{max(history):.1%} (epoch {int(np.argmax(history)) + 1})",
                "recall": ", ".join(f"{e} {r:.0%}" for e, r in zip(RAVDESS, recall, strict=True)),
                "history": ", ".join(f"{a:.1%}" for a in history),
                "command": command,
                "train_time": f"{train_time / 60:.1f} min",
                "epoch_times": f"{min(epoch_times):.0f} s to {max(epoch_times):.0f} s",
                "total_time": f"{total_time / 60:.1f} min",
                "machine": machine_description(device, args.threads),
                "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                "budget_note": "was ended by the budget"
                if stopped_early
                else "ran all its planned epochs",
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
