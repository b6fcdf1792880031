"""The ablation's report (docs/fusion_report.md) and the fusion model's card
(fusion/weights/fusion.md), written from the run's report."""

from __future__ import annotations

import json
from typing import Any

from fusion.heads.labels import RAVDESS
from fusion.inference import WEIGHTS_PATH
from fusion.training.fusion_model.criteria import METRICS
from fusion.training.simulator import clip_emotion
from fusion.training.simulator_tables import EMOTIONS

__all__ = ["fmt", "model_card", "render_markdown"]


def fmt(summary: dict[str, dict[str, float]], key: str) -> str:
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
        lines.append(f"| {name} | " + " | ".join(fmt(summary, k) for k, _ in METRICS) + " |")
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
                f"| {name} | {cond} | " + " | ".join(fmt(summary, k) for k, _ in METRICS) + " |"
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


def model_card(report: dict[str, Any]) -> str:
    ship = report["ship_strategy"]
    summary = report["results"][f"fusion: {ship}"]["conditions"]["all"]["summary"]
    size_kb = WEIGHTS_PATH.stat().st_size / 1024 if WEIGHTS_PATH.exists() else 0.0
    mapping = ", ".join(f"{k} → {clip_emotion(k)}" for k in RAVDESS if clip_emotion(k))
    unused = ", ".join(k for k in RAVDESS if clip_emotion(k) is None)
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
            "non-commercial**; this model inherits that restriction. Emotion mapping (the "
            "heads' RAVDESS → service mapping, frustrated read as angry, "
            f"`fusion.training.simulator.clip_emotion`): {mapping} ({unused} unused).",
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
            *[f"- {label}: {fmt(summary, key)}" for key, label in METRICS],
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
