"""Ensemble members of the heads, fitted one at a time: an MLP over the frozen embedding
(or over voice features), optionally with a lexical branch trained beside it, and the
helpers that deal the training rows into folds and read the members' logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.heads.lexical import lexical_pack
from fusion.heads.modules import EnsembleConfig, EnsembleMLP, LexicalBag, LexiconConfig
from fusion.training.data import RUNS_DIR

__all__ = [
    "RUN_DIR",
    "FitConfig",
    "LexiconFit",
    "fit_lexical_member",
    "fit_member",
    "logistic_baseline",
    "member_logits",
    "one_hot",
    "soft_targets",
    "softmax",
    "stratified_folds",
    "text_logits",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# The heads' runs: reports and the intent members, cached by what determines them.
RUN_DIR = RUNS_DIR / "understanding"


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
    groupings: Sequence[FloatArray] = (),
    *,
    progress: bool = True,
    desc: str = "member",
) -> tuple[EnsembleMLP, LexicalBag]:
    """One member (M = 1) on rows `x` [N, D] with target distributions [N, C]; seeded. With
    `lexicon` buckets, a lexical branch trains beside the MLP on the rows' `lexical_ids`
    `grams` (else the branch stays empty and the MLP trains alone, bit for bit the same);
    `groupings` ([C, K] 0/1 matrices) add the grouped cross-entropies weighted
    `lexicon.grouped`."""
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
    grouped = lexicon.grouped if lexicon is not None else 0.0
    maps = [torch.from_numpy(m) for m in groupings] if grouped else []
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
            for m in maps:
                in_groups = (logp.exp() @ m).clamp_min(1e-8).log()
                loss = loss - grouped * ((yt[b] @ m) * in_groups).sum(dim=-1).mean()
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


def soft_targets(labels: Sequence[tuple[int, ...]], n: int) -> FloatArray:
    """Multi-label rows as distributions: each of a row's labels gets an equal share."""
    out = np.zeros((len(labels), n), dtype=np.float32)
    for i, row in enumerate(labels):
        out[i, list(row)] = 1.0 / len(row)
    return out


def stratified_folds(labels: IntArray, k: int, seed: int) -> IntArray:
    """Fold id per row: each label's rows shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % k
    return fold


def logistic_baseline(x: FloatArray, y: IntArray, seed: int) -> Any:
    """The do-it-yourself baseline: frozen embeddings + logistic regression (C=10)."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped, unused-ignore]

    return LogisticRegression(C=10.0, max_iter=3000, random_state=seed).fit(x, y)
