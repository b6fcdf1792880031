"""The intent head's trainer: a cross-fitted ensemble over Banking77 (+ CLINC150's
out-of-scope utterances), its temperature and out-of-scope threshold on out-of-fold
predictions, then the FiLM stage (`fusion.training.heads.film`); and the re-scoring of the
shipped weights through the served path (`--score-shipped`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.heads.checkpoint import IntentArtifact, file_sha256, load_intent, save_intent
from fusion.heads.labels import OUT_OF_SCOPE
from fusion.heads.lexical import lexical_ids
from fusion.heads.modules import (
    EnsembleConfig,
    EnsembleMLP,
    FiLMConfig,
    IntentModel,
    LexicalBag,
    LexiconConfig,
)
from fusion.training.calibration import expected_calibration_error, fit_temperature
from fusion.training.corrections import intent_rows, read_corrections
from fusion.training.data import load_banking77, load_clinc_oos
from fusion.training.features import digest, text_features
from fusion.training.heads.film import (
    BACKGROUND_ONLY_P,
    film_validation,
    fit_film,
    load_fusion,
    simulated_sessions,
)
from fusion.training.heads.intent_figures import (
    INTENT_SERVING,
    choose_threshold,
    intent_report,
    served_intent_figures,
)
from fusion.training.heads.members import (
    RUN_DIR,
    FitConfig,
    LexiconFit,
    fit_lexical_member,
    one_hot,
    softmax,
    stratified_folds,
    text_logits,
)

__all__ = ["OOS_SPLITS", "score_shipped_intent", "train_intent"]

OOS_SPLITS = ("oos_train", "oos_val", "oos_test")


def train_intent(args: argparse.Namespace, data_dir: Path, device: torch.device) -> dict[str, Any]:
    progress = not args.no_progress
    train = load_banking77(data_dir, "train")
    test = load_banking77(data_dir, "test")
    intents = train.intents
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

    corrections = read_corrections(args.corrections) if args.corrections is not None else []
    corrected = intent_rows(corrections, intents)
    x_fix = text_features(corrected[0], device, desc="corrections")
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
        key = digest(
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
        checkpoint = RUN_DIR / "members" / f"intent-{key}.pt"
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
                progress=progress,
                desc=f"member {k + 1}",
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
        data_dir,
        intents,
        train.labels,
        args.sim_seed,
        args.sessions,
        fusion,
        progress,
        background_only_p=BACKGROUND_ONLY_P,
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
    intents = load_banking77(data_dir, "train").intents
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
