"""The emotion head's trainer: a text expert over GoEmotions (an ensemble of MLPs over the
MiniLM embedding, each with a lexical branch), the speech expert
(`fusion.training.heads.speech_head`), and their product of experts, fitted and scored on
simulated text + speech pairs (no corpus has both)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from fusion.heads.checkpoint import save_emotion
from fusion.heads.labels import (
    EKMAN,
    GOEMOTIONS_TO_EKMAN,
    GOEMOTIONS_TO_SERVICE,
    RAVDESS,
    RAVDESS_TO_SERVICE,
    SERVICE_EMOTIONS,
    mapping_matrix,
)
from fusion.heads.lexical import lexical_ids
from fusion.heads.modules import (
    EmotionModel,
    EnsembleConfig,
    EnsembleMLP,
    LexicalBag,
    LexiconConfig,
)
from fusion.training.calibration import (
    fit_product_of_experts,
    fit_temperature,
    macro_f1,
    tune_prior_correction,
)
from fusion.training.corrections import emotion_rows, read_corrections
from fusion.training.data import load_goemotions
from fusion.training.features import text_features
from fusion.training.heads.members import (
    FitConfig,
    LexiconFit,
    fit_lexical_member,
    logistic_baseline,
    soft_targets,
    softmax,
    text_logits,
)
from fusion.training.heads.scores import emotion_scores, single_label
from fusion.training.heads.speech_head import HELD_ACTORS, train_speech_head

__all__ = ["train_emotion"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


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
    corrections = read_corrections(args.corrections) if args.corrections is not None else []
    fix_texts, fix_targets, skipped = emotion_rows(corrections, names, GOEMOTIONS_TO_SERVICE)
    report["data"]["corrections"] = {"used": len(fix_texts), "skipped": skipped}
    x_fit = np.concatenate([x["train"], text_features(fix_texts, device, desc="corrections")])
    grams = {
        s: [lexical_ids(t, lexicon.buckets) if lexicon.buckets else [] for t in texts]
        for s, texts in (*((s, g.texts) for s, g in split.items()), ("fix", fix_texts))
    }
    grams_fit = grams["train"] + grams["fix"]
    targets = np.concatenate([targets, fix_targets])
    members = [
        fit_lexical_member(
            text_cfg,
            replace(fit, seed=args.seed * 100 + k),
            x_fit,
            targets,
            grams_fit,
            lexicon,
            (to_service, to_ekman),
            progress=progress,
            desc=f"text member {k + 1}",
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
